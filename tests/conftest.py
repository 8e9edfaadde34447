import os

# Where there is no NVIDIA GPU, the Numba CUDA kernels run in Numba's CUDA simulator (every thread a
# Python thread): it must be switched on before numba is first imported, hence here.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from hypothesis import HealthCheck, settings

# Simulated runs start threads: no per-example deadline. CI gets a fixed example budget.
settings.register_profile("default", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=1000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
