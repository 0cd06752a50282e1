"""Long-lived parties from a cluster file: CURVE on every link, drivers authenticated by key,
the session handshake, and several driver sessions in a row."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel

import securetorch as puma
from securetorch.runtime.deployment import ClusterConfig, ConfigError

from ..deploy import TIMEOUT, cluster_file, free_ports

transformers.logging.set_verbosity_error()


def test_a_driver_runs_secure_work_over_curve(deployment) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["admin"]) as cluster:
        assert (cluster.driver, cluster.role) == ("admin", "admin")
        assert cluster.run(puma.rank) == [0, 1, 2]
        got = cluster.run(lambda v: (v @ v.T).relu(), puma.private(x))[0]
        assert torch.allclose(got, (x @ x.T).relu(), atol=1e-3)
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()  # fmt: skip
        ids = torch.randint(0, 50, (1, 5), generator=torch.Generator().manual_seed(1))
        secure_model = puma.secure(model, cluster=cluster)
        out = secure_model(input_ids=ids)
        with torch.no_grad():
            ref = model(input_ids=ids)
        assert float((out.last_hidden_state - ref.last_hidden_state).abs().max()) <= 1e-2
        secure_model.close()
    # the parties keep serving: a second session (fresh PRG keys) works the same
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["admin"]) as cluster:
        assert torch.allclose(cluster.run(lambda v: v * 3, puma.private(x))[0], x * 3, atol=1e-4)


def test_a_driver_with_an_unknown_key_is_refused(deployment) -> None:
    started = time.monotonic()
    with pytest.raises(puma.PartyError, match="public key listed under \\[\\[drivers\\]\\]"):
        puma.Cluster.from_config(deployment.config, key=deployment.intruder)
    assert time.monotonic() - started < TIMEOUT + 15
    with pytest.raises(ConfigError, match="pass key="):
        puma.Cluster.from_config(deployment.config)


def test_a_settings_mismatch_names_the_setting(deployment, tmp_path) -> None:
    keys = [k[2] for k in deployment.party_keys]
    other = cluster_file(tmp_path / "other.toml", deployment.ports, keys, deployment.drivers, frac_bits=16)
    with pytest.raises(puma.PartyError, match="frac_bits differs: the party has 18, the driver has 16"):
        puma.Cluster.from_config(other, key=deployment.keys["admin"])
    # the refused driver left the parties serving
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["admin"]) as cluster:
        assert cluster.run(puma.rank) == [0, 1, 2]


def test_party_refuses_a_key_that_is_not_its_own(deployment) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "securetorch.cli", "party", "--rank", "0", "--config", deployment.config, "--key", str(deployment.keys["admin"])],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "is not the key that" in result.stderr and "lists for party 0" in result.stderr


def test_cluster_file_errors_say_what_is_wrong(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[parties]]\nrank = 0\ncontrol = "tcp://127.0.0.1:1"\npeer = "tcp://127.0.0.1:2"\n')
    with pytest.raises(ConfigError, match="exactly three"):
        ClusterConfig.load(bad)
    keys = ["x" * 40] * 3
    path = cluster_file(tmp_path / "nodrivers.toml", list(range(1000, 1006)), keys, {})
    with pytest.raises(ConfigError, match="no driver could connect"):
        ClusterConfig.load(path)


def test_model_owner_leaves_client_uses_it_and_a_killed_party_restarts_from_its_shares(deployment) -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = BertModel(config).eval()
    ids = torch.randint(0, 50, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(input_ids=ids).last_hidden_state
    # the model owner secures the model under a name for one client, has each party save its
    # shares (to the directory its own cluster file names), and leaves
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["owner"]) as owner:
        assert owner.role == "owner"
        secured = puma.secure(model, cluster=owner, name="tiny-bert", clients=["client"])
        paths = puma.save_shares(secured)
    shares = deployment.shares
    assert paths == [str(shares / f"party{r}" / "tiny-bert" / f"party{r}.safetensors") for r in range(3)]
    assert all(os.stat(p).st_mode & 0o777 == 0o600 for p in paths)
    # the client uses it by name, without the weights
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["client"]) as user:
        remote = puma.SecureModel.by_name("tiny-bert", user)
        assert float((remote(input_ids=ids).last_hidden_state - want).abs().max()) <= 1e-2
        with pytest.raises(puma.AccessError, match="no model named 'nope' that driver 'client' may call"):
            puma.SecureModel.by_name("nope", user)
        # party 1 dies while the client sends requests (one may finish before it does): the
        # request it interrupts, or the next one, fails, and the driver hears of it within the timeout
        long_ids = torch.randint(0, 50, (1, 60), generator=torch.Generator().manual_seed(3))
        victim = deployment.procs[1].pid
        killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(0.3); os.kill({victim}, 9)"])
        started = time.monotonic()
        with pytest.raises(puma.PartyError):
            while time.monotonic() - started < 60:
                remote(input_ids=long_ids)
        assert time.monotonic() - started < 2 * TIMEOUT + 10
        killer.wait()
    deployment.procs[1].wait(10)
    # the operator restarts party 1 from its shares file; the cluster serves the next request
    deployment.restart(1, paths[1])
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["client"]) as user:
        remote = puma.SecureModel.by_name("tiny-bert", user)
        assert float((remote(input_ids=ids).last_hidden_state - want).abs().max()) <= 1e-2


def test_a_party_serves_only_its_own_shares_file(deployment) -> None:
    from securetorch.models import sharefile

    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["owner"]) as owner:
        secured = puma.secure(BertModel(config).eval(), cluster=owner, name="other")
        paths = puma.save_shares(secured)
        secured.close()
    with pytest.raises(ValueError, match="holds party 0's shares, not party 1's"):
        sharefile.load(paths[0], rank=1, frac_bits=18)
    with pytest.raises(ValueError, match="written with frac_bits = 18, this party uses 16"):
        sharefile.load(paths[1], rank=1, frac_bits=16)


def test_a_driver_dying_mid_request_leaves_the_parties_serving(deployment) -> None:
    script = f"""
import torch, securetorch as puma
cluster = puma.Cluster.from_config({deployment.config!r}, key={str(deployment.keys["admin"])!r})
x = torch.randn(64, 64)
print("connected", flush=True)
cluster.run(lambda v: [v := (v @ v).tanh() for _ in range(150)][-1], puma.private(x))
"""
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert driver.stdout.readline().strip() == "connected"
    time.sleep(1.0)
    driver.kill()
    driver.wait()
    x = torch.randn(3, 3, generator=torch.Generator().manual_seed(4))
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["admin"]) as cluster:
        assert torch.allclose(cluster.run(lambda v: v + 1, puma.private(x))[0], x + 1, atol=1e-4)


def test_a_party_refuses_an_unencrypted_cluster_file_unless_told(tmp_path) -> None:
    path = tmp_path / "plain.toml"
    path.write_text(
        "".join(f'[[parties]]\nrank = {r}\ncontrol = "tcp://127.0.0.1:{1 + r}"\npeer = "tcp://127.0.0.1:{9 + r}"\n' for r in range(3))
        + '[[drivers]]\nname = "tester"\nrole = "admin"\n'
    )  # fmt: skip
    cmd = [sys.executable, "-m", "securetorch.cli", "party", "--rank", "0", "--config", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "lists no public keys" in result.stderr and "--insecure" in result.stderr


def test_an_insecure_test_setup_serves_the_driver_it_names(tmp_path) -> None:
    """--insecure: no keys, no authentication; a driver names itself (tests only)."""
    ports = free_ports(6)
    path = tmp_path / "plain.toml"
    path.write_text(
        f"[settings]\ntimeout = {TIMEOUT}\n"
        + "".join(f'[[parties]]\nrank = {r}\ncontrol = "tcp://127.0.0.1:{ports[2 * r]}"\npeer = "tcp://127.0.0.1:{ports[2 * r + 1]}"\n' for r in range(3))
        + '[[drivers]]\nname = "alice"\nrole = "owner"\n[[drivers]]\nname = "bob"\nrole = "client"\n'
    )  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [
        subprocess.Popen([sys.executable, "-m", "securetorch.cli", "party", "--rank", str(r), "--config", str(path), "--insecure"], env=env, stdout=subprocess.PIPE, text=True)
        for r in range(3)
    ]  # fmt: skip
    try:
        for p in procs:
            assert "(unencrypted)" in p.stdout.readline()
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)).eval()  # fmt: skip
        with puma.Cluster.from_config(path, name="alice") as owner:
            assert owner.role == "owner"
            puma.secure(model, cluster=owner, name="plain-bert", clients=["bob"])
        with pytest.raises(ConfigError, match="no driver named 'carol'"):
            puma.Cluster.from_config(path, name="carol")
        ids = torch.tensor([[1, 2, 3]])
        with puma.Cluster.from_config(path, name="bob") as client:
            out = puma.SecureModel.by_name("plain-bert", client)(input_ids=ids)
        with torch.no_grad():
            assert float((out.last_hidden_state - model(input_ids=ids).last_hidden_state).abs().max()) <= 1e-2
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
