import time

import pytest


@pytest.mark.parametrize("n", range(4))
def test_step(n):
    time.sleep(1)
