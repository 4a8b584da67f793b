// flatmin: one include for the whole library.
#pragma once
#include "autodiff/autodiff.hpp"
#include "datasets/datasets.hpp"
#include "nn/nn.hpp"
#include "optim/optim.hpp"
#include "train/train.hpp"
