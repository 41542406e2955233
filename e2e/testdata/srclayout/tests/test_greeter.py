from greeter import greet


def test_greet():
    assert greet("ci") == "hello, ci"
