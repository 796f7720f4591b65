// The CUDA runtime API is declared by cuda_on_cpu.h, force-included before everything.
#pragma once
