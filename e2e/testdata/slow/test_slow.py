import time


def test_slow():
    # Long enough to be running when the e2e test restarts the server.
    time.sleep(60)
