// The train layer in one include: training a classifier with any optimizer of optim/
// (closures, evaluation, checkpoints, the loop) and the data-parallel closures.
#pragma once
#include "train/data_parallel.hpp"
#include "train/training.hpp"
