// The optim layer in one include: optimizers (SGD, SAM/ASAM, RS and SA), sharpness
// measures, flatness certificates, the Hessian spectrum and the theorems' settings.
// Training with checkpoints and the data-parallel closures are a layer above (train/).
#pragma once
#include "optim/certificate.hpp"
#include "optim/optimizer.hpp"
#include "optim/perturbation.hpp"
#include "optim/sam.hpp"
#include "optim/sgd.hpp"
#include "optim/sharpness.hpp"
#include "optim/spectrum.hpp"
#include "optim/theorems.hpp"
