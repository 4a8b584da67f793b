// The nn layer in one include: modules, layers, ResNet-18, safetensors state dicts.
#pragma once
#include "nn/layers.hpp"
#include "nn/module.hpp"
#include "nn/resnet.hpp"
#include "nn/safetensors.hpp"
