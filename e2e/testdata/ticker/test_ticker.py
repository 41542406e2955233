import sys
import time


def test_ticks():
    # A numbered line every 0.2 s for about 6 s: long enough to kill and
    # restart the server in the middle.
    for i in range(1, 31):
        print(f"tick {i:03d}", flush=True)
        time.sleep(0.2)
    sys.stdout.write("ticks done\n")
