import pytest

from bridge.auth import Authenticator, mask_guid
from bridge.protocol import Refusal

GUID = "279fe21d-1b2c-4d3e-9f00-aabbccddeeff"


def status_and_code(auth, guid, token):
    with pytest.raises(Refusal) as caught:
        auth.check(guid, token)
    return caught.value.status, caught.value.retcode


def test_valid_guid_and_token_return_the_gateway_node():
    auth = Authenticator(("tokenA", "tokenB"), allow_no_token=False)
    assert auth.check(f"{GUID}.AgentGateway0", "tokenA") == "AgentGateway0"
    assert auth.check(GUID.upper(), "tokenB") == ""


@pytest.mark.parametrize("guid", [None, "", "  ", "279fe21d", f"{GUID}.", f"{GUID}.node/x", f"x{GUID}",
                                  f"{GUID}.{'n' * 65}", "JSESSIONID=" + GUID])
def test_malformed_guid_is_401(guid):
    assert status_and_code(Authenticator(("t",), False), guid, "t") == (401, "000-002")


@pytest.mark.parametrize("token", ["", "a" * 51, "has space", "semi;colon", "ünïcode"])
def test_malformed_token_is_100_001(token):
    assert status_and_code(Authenticator(("t",), False), GUID, token) == (400, "100-001")


def test_missing_or_unknown_token_is_403():
    auth = Authenticator(("tokenA",), False)
    assert status_and_code(auth, GUID, None) == (403, "000-003")
    assert status_and_code(auth, GUID, "tokenB") == (403, "000-003")
    assert status_and_code(auth, GUID, "tokenAA") == (403, "000-003")


def test_tokenless_mode_accepts_without_token_but_still_checks_guid_and_format():
    auth = Authenticator((), allow_no_token=True)
    assert auth.check(GUID, None) == ""
    assert auth.check(GUID, "anything") == ""
    assert status_and_code(auth, "bad", None)[0] == 401
    assert status_and_code(auth, GUID, "bad token")[0] == 400


def test_configured_tokens_win_over_the_tokenless_flag():
    assert status_and_code(Authenticator(("t",), allow_no_token=True), GUID, None) == (403, "000-003")


def test_mask_hides_the_session_part():
    masked = mask_guid(f"{GUID}.AgentGateway1")
    assert masked == "279f****.AgentGateway1"
    assert "1b2c" not in masked
