def test_big():
    for i in range(1, 200001):
        print(f"line {i:06d} of a large log")
