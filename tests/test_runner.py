from mmbench.runner import worker_slots


def test_worker_slots():
    assert worker_slots("0,1", 4) == ["0", "1"]  # one worker per listed GPU
    assert worker_slots(" 3 ", 1) == ["3"]
    assert worker_slots(None, 2) == ["", ""]  # CPU workers see no device
    assert worker_slots(None, 0) == [""]
