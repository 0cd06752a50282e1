"""Three hosts for real: each party in its own network namespace (a veth pair to a bridge),
set up with the README's deployment commands (``securetorch keygen``, a cluster file,
``securetorch party --config``), CURVE over real TCP, a secure model end to end.

Needs root (CI runs as root) and iproute2; otherwise skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel

import securetorch as puma
from securetorch.comm.stats import total

transformers.logging.set_verbosity_error()

SUBNET = "10.231.77"
TAG = f"{os.getpid() % 10000:04d}"
BRIDGE = f"stbr{TAG}"


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _securetorch() -> list[str]:
    """The ``securetorch`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("securetorch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "securetorch.cli"]


def _teardown(namespaces: list[str]) -> None:
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (CI runs as root)")
    namespaces = [f"st{TAG}p{r}" for r in range(3)]
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.254/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for r, ns in enumerate(namespaces):
            host_end, ns_end = f"st{TAG}h{r}", f"st{TAG}n{r}"
            _ip("netns", "add", ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", host_end, "master", BRIDGE)
            _ip("link", "set", host_end, "up")
            _ip("link", "set", ns_end, "netns", ns)
            _ip("addr", "add", f"{SUBNET}.{r + 1}/24", "dev", ns_end, netns=ns)
            _ip("link", "set", ns_end, "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
    except subprocess.CalledProcessError as exc:
        _teardown(namespaces)
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.strip()}")
    yield namespaces, tmp_path_factory.mktemp("hosts")
    _teardown(namespaces)


def test_three_parties_on_three_hosts_over_curve_owner_and_client(hosts) -> None:
    namespaces, work = hosts
    cli = _securetorch()
    # step 1 of the README: a key pair per party and one per driver
    public = {}
    for name in ("party0", "party1", "party2", "alice", "bob"):
        out = subprocess.run([*cli, "keygen", name], cwd=work, check=True, capture_output=True, text=True)
        public[name] = out.stdout.split("public key: ")[1].strip()
    # step 2: the cluster file, with the drivers' roles
    parties = "\n".join(
        f'[[parties]]\nrank = {r}\ncontrol = "tcp://{SUBNET}.{r + 1}:7100"\npeer = "tcp://{SUBNET}.{r + 1}:7101"\n'
        f'public_key = "{public[f"party{r}"]}"\n'
        for r in range(3)
    )
    drivers = "\n".join(
        f'[[drivers]]\nname = "{name}"\npublic_key = "{public[name]}"\nrole = "{role}"\n'
        for name, role in (("alice", "owner"), ("bob", "client"))
    )
    config = work / "cluster.toml"
    config.write_text(f"[settings]\nfrac_bits = 18\ncompare_bits = 44\ntimeout = 20.0\n\n{parties}\n{drivers}")
    # step 3: each party on its host
    procs = [
        subprocess.Popen(
            ["ip", "netns", "exec", ns, *cli, "party", "--rank", str(r), "--config", "cluster.toml", "--key", f"party{r}.key_secret"],
            cwd=work,
            stdout=subprocess.PIPE,
            text=True,
        )
        for r, ns in enumerate(namespaces)
    ]  # fmt: skip
    try:
        for r, p in enumerate(procs):
            assert f"serving drivers on tcp://{SUBNET}.{r + 1}:7100" in p.stdout.readline()
        # step 4: the owner installs the model for bob and leaves
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)).eval()  # fmt: skip
        ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(1))
        with puma.Cluster.from_config(config, key=work / "alice.key_secret") as owner:
            assert owner.role == "owner"
            puma.secure(model, cluster=owner, name="bert", clients=["bob"])
        # step 5: bob, a client with his own key, calls it
        with puma.Cluster.from_config(config, key=work / "bob.key_secret") as client:
            assert client.role == "client"
            out = puma.SecureModel.by_name("bert", client)(input_ids=ids)
            traffic = total(client.stats())
            with pytest.raises(puma.AccessError, match="only admin drivers"):
                client.run(puma.rank)
            client.role = "admin"  # a driver that skips its own check is refused by the parties
            with pytest.raises(puma.AccessError, match="run is not allowed for a driver whose role is client"):
                client.run(puma.rank)
        with torch.no_grad():
            want = model(input_ids=ids).last_hidden_state
        assert float((out.last_hidden_state - want).abs().max()) <= 1e-2
        assert traffic.bytes_sent > 0 and traffic.rounds > 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
