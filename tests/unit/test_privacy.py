from streamguard.privacy import Pseudonymizer


def test_hashes_are_stable_keyed_and_namespaced():
    a, b = Pseudonymizer(b"key-a" * 4), Pseudonymizer(b"key-b" * 4)
    assert a.token("ip", "1.2.3.4") == a.token("ip", "1.2.3.4")
    assert a.token("ip", "1.2.3.4") != b.token("ip", "1.2.3.4")
    assert a.digest("ip", "x") != a.digest("phone", "x")
    assert "1.2.3.4" not in a.token("ip", "1.2.3.4")
