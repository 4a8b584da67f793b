// datasets: one include for the data layer.
#pragma once
#include "datasets/dataset.hpp"
#include "datasets/loader.hpp"
#include "datasets/readers.hpp"
#include "datasets/synthetic.hpp"
