import time

import pytest


@pytest.mark.parametrize("n", range(3))
def test_step(n):
    time.sleep(1)
