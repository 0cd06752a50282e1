"""Key files and cluster files: secret keys are private from their first byte, a party refuses
one that others can read, and configuration errors say where and what is wrong."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

import securetorch as puma
from securetorch.comm import security
from securetorch.comm.security import KeyFileError, keygen, load_keypair
from securetorch.runtime.deployment import ClusterConfig, ConfigError
from securetorch.runtime.party import PartyServer

from ..deploy import cluster_file, free_ports


def test_keygen_creates_the_secret_key_with_mode_600_from_the_start(tmp_path, monkeypatch) -> None:
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        opened.append((str(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(security.os, "open", spy)
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        public_file, secret_file, public = keygen(tmp_path, "alice")
    finally:
        os.umask(old_umask)
    assert (str(secret_file), 0o600) in opened
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public_file).st_mode) == 0o644
    assert load_keypair(secret_file)[0].decode() == public
    with pytest.raises(KeyFileError, match="never overwrites"):
        keygen(tmp_path, "alice")


def test_a_secret_key_open_to_others_is_refused(tmp_path) -> None:
    _, secret_file, _ = keygen(tmp_path, "party0")
    os.chmod(secret_file, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keypair(secret_file)
    party = [keygen(tmp_path, f"p{r}") for r in range(3)]
    driver = keygen(tmp_path, "driver")
    config = cluster_file(
        tmp_path / "cluster.toml", free_ports(6), [p[2] for p in party], {"driver": (driver[2], "client")}
    )
    os.chmod(party[0][1], 0o644)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "securetorch.cli",
            "party",
            "--rank",
            "0",
            "--config",
            config,
            "--key",
            str(party[0][1]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "open to group or others" in result.stderr and "chmod 600" in result.stderr
    os.chmod(driver[1], 0o604)
    with pytest.raises(ConfigError, match="open to group or others"):
        puma.Cluster.from_config(config, key=driver[1])


PARTIES = "".join(
    f'[[parties]]\nrank = {r}\ncontrol = "tcp://127.0.0.1:{7000 + r}"\npeer = "tcp://127.0.0.1:{7100 + r}"\n'
    for r in range(3)
)
DRIVER = '[[drivers]]\nname = "alice"\nrole = "owner"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PARTIES.replace("rank = 1", 'rank = "a"') + DRIVER, r"\[\[parties\]\] entry 2: rank must be an integer in 0..2, got 'a'"),
        (DRIVER, r"no \[\[parties\]\] tables"),
        ("[settings]\nfrac_bits = 99\n" + PARTIES + DRIVER, r"\[settings\] frac_bits must be an integer in 0..30, got 99"),
        ("[settings]\ntimeout = -1\n" + PARTIES + DRIVER, r"\[settings\] timeout must be a number above 0"),
        (PARTIES.replace('control = "tcp://127.0.0.1:7000"', 'control = "http://x"') + DRIVER, r"control must be a string starting with tcp:// or ipc://"),
        (PARTIES + '[drivers]\npublic_keys = ["' + "x" * 40 + '"]\n', r"old form(.|\n)*\[\[drivers\]\]\nname = "),
        (PARTIES + DRIVER.replace("owner", "root"), r"role must be owner or client or admin, got 'root'"),
        (PARTIES, r"no \[\[drivers\]\] tables"),
        (PARTIES + DRIVER + DRIVER, r"two \[\[drivers\]\] entries are named 'alice'"),
        ("[settings\n", r"cannot read cluster file"),
        (PARTIES.replace("rank = 1\n", 'rank = 1\ndevice = "gpu:one"\n') + DRIVER, r"entry 2: device must be a torch device such as"),
        (PARTIES.replace("rank = 1\n", 'rank = 1\ndevice = "meta"\n') + DRIVER, r"entry 2: device must be a torch device such as"),
    ],
)  # fmt: skip
def test_cluster_file_errors_name_the_file_the_field_and_the_expected_form(tmp_path, text, message) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        ClusterConfig.load(path)
    assert str(path) in str(info.value)


def test_each_party_names_its_device_and_a_party_without_it_refuses_to_start(tmp_path) -> None:
    path = tmp_path / "cluster.toml"
    absent = "cuda:7" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    path.write_text(PARTIES.replace("rank = 1\n", f'rank = 1\ndevice = "{absent}"\n') + DRIVER)
    config = ClusterConfig.load(path)
    assert [p.device for p in config.parties] == ["cpu", absent, "cpu"]
    assert ClusterConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=f"device '{absent}' is not available here"):
        PartyServer(1, config, None)


def test_each_party_logs_under_its_own_logger(capfd) -> None:
    with puma.LocalCluster() as cluster:
        cluster._sockets[2].send_multipart([b"\xff", b"not json"])
        assert cluster.run(puma.rank) == [0, 1, 2]
    err = capfd.readouterr().err
    assert "securetorch.party2 WARNING" in err and "failed" in err
