"""--share (A1111's public link): the console prints Gradio's tunnel address as https, the tunnel reaches the
server where it listens, a failed tunnel leaves the local server running with a one-line reason, and the start-up
warnings name the link's open surfaces. Gradio's tunnel itself needs the internet: here it is replaced by a
recording stand-in (tests reach only loopback)."""
from __future__ import annotations

from modules import auth, cmd_args
from modules.server import print_share_link


def test_share_prints_the_public_https_url_and_tunnels_to_where_the_server_listens(capsys):
    calls = []

    def tunnel(**kw):
        calls.append(kw)
        return "http://0123abcd.gradio.live"

    assert print_share_link("0.0.0.0", 7861, tunnel) == "https://0123abcd.gradio.live"
    assert "Running on public URL: https://0123abcd.gradio.live" in capsys.readouterr().out
    assert calls[0]["local_host"] == "127.0.0.1" and calls[0]["local_port"] == 7861
    print_share_link("192.168.1.5", 7860, tunnel)
    assert calls[1]["local_host"] == "192.168.1.5"
    assert len(calls[0]["share_token"]) >= 32 and calls[0]["share_token"] != calls[1]["share_token"]


def test_a_failed_tunnel_says_why_and_the_server_goes_on(capsys):
    def offline(**kw):
        raise RuntimeError("Could not get share link from Gradio API Server.")

    assert print_share_link("127.0.0.1", 7860, offline) is None
    err = capsys.readouterr().err
    assert "could not create a share link" in err and "Gradio API Server" in err and "still served" in err


def test_a_missing_tunnel_client_is_named_with_where_it_comes_from(tmp_path, monkeypatch, capsys):
    from gradio import tunneling

    monkeypatch.setattr(tunneling, "BINARY_PATH", str(tmp_path / "frpc_linux_amd64_v0.3"))

    def no_download(**kw):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    print_share_link("127.0.0.1", 7860, no_download)
    err = capsys.readouterr().err
    assert str(tmp_path / "frpc_linux_amd64_v0.3") in err and tunneling.BINARY_URL in err
    (tmp_path / "frpc_linux_amd64_v0.3").write_bytes(b"client")
    print_share_link("127.0.0.1", 7860, no_download)
    assert "missing" not in capsys.readouterr().err


def test_share_warns_for_each_surface_without_a_password():
    ns = cmd_args.parse_args(["--share", "--api"], env={})
    warnings = auth.exposure_warnings(ns, "127.0.0.1", 7860)
    assert len(warnings) == 2 and all("public share link" in w and "has the share link" in w for w in warnings)
    assert "127.0.0.1" not in warnings[0]
    both = auth.exposure_warnings(cmd_args.parse_args(["--share", "--listen"], env={}), "0.0.0.0", 7860)
    assert len(both) == 1 and "0.0.0.0:7860 and its public share link" in both[0]
    assert auth.exposure_warnings(cmd_args.parse_args(["--share", "--api", "--auth", "u:p"], env={}),
                                  "127.0.0.1", 7860) == []
