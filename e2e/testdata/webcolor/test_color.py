import sys
import time


def test_prints_colours():
    print("\x1b[31mRED\x1b[0m")
    print("\x1b[1;32mBOLDGREEN\x1b[0m")
    print("\x1b[38;5;208mORANGE256\x1b[0m \x1b[38;2;120;60;200mPURPLE24\x1b[0m \x1b[3;4mITALICUNDER\x1b[0m")
    sys.stdout.flush()
    time.sleep(0.2)  # stdout and stderr are separate pipes: keep their order
    print("STDERRLINE: a warning on stderr", file=sys.stderr)
    sys.stderr.flush()


def test_fails():
    assert 1 + 1 == 3, "arithmetic still works"
