import pytest


@pytest.fixture
def broken():
    raise RuntimeError("this fixture is broken")


def test_adds():
    assert 1 + 1 == 2


def test_concatenates():
    assert "ab" + "c" == "abc"


def test_wrong():
    assert 6 * 7 == 43, "the answer is wrong"


def test_broken_fixture(broken):
    pass


@pytest.mark.skip(reason="not on this box")
def test_not_on_this_box():
    pass
