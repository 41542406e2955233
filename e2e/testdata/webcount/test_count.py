import time


def test_count():
    for i in range(1, 41):
        print(f"tick {i:03d}")
        time.sleep(0.1)
