// The optim layer in one include: optimizers (SGD, SAM/ASAM, RS and SA), sharpness
// measures, flatness certificates and the Hessian spectrum, training with checkpoints,
// data-parallel closures.
#pragma once
#include "optim/data_parallel.hpp"
#include "optim/optimizer.hpp"
#include "optim/perturbation.hpp"
#include "optim/sam.hpp"
#include "optim/sgd.hpp"
#include "optim/sharpness.hpp"
#include "optim/spectrum.hpp"
#include "optim/training.hpp"
