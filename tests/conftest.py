import os

import hypothesis
import torch

# Two CI cores: keep each test process to one intra-op thread so pytest-xdist
# workers do not oversubscribe.
torch.set_num_threads(int(os.environ.get("NLFRAME_TEST_THREADS", "1")))

hypothesis.settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
)
hypothesis.settings.register_profile(
    "nightly", max_examples=300, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
