"""Roles against a deployment over CURVE: what a client, another owner or another driver's
session may not do, shown refused by the parties themselves (the drivers' own checks are
bypassed where they exist)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel

import securetorch as puma
from securetorch.runtime.verbs import Verb

transformers.logging.set_verbosity_error()

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)


def small_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(CONFIG).eval()


def ids() -> torch.Tensor:
    return torch.randint(0, 40, (1, 5), generator=torch.Generator().manual_seed(7))


def connect(deployment, name: str) -> puma.Cluster:
    return puma.Cluster.from_config(deployment.config, key=deployment.keys[name])


@pytest.fixture(scope="module")
def owned(deployment):
    """'owned-bert', installed by the owner for one client; the owner stays connected."""
    model = small_bert()
    with connect(deployment, "owner") as owner:
        puma.secure(model, cluster=owner, name="owned-bert", clients=["client"])
        yield model


def answers_like(model: BertModel, deployment, name: str = "client") -> bool:
    with connect(deployment, name) as cluster:
        out = puma.SecureModel.by_name("owned-bert", cluster)(input_ids=ids())
    with torch.no_grad():
        want = model(input_ids=ids()).last_hidden_state
    return float((out.last_hidden_state - want).abs().max()) <= 1e-2


def test_a_client_cannot_ship_code_into_the_parties(deployment, owned) -> None:
    with connect(deployment, "client") as client:
        with pytest.raises(puma.AccessError, match="only admin drivers"):
            client.run(puma.rank)
        client.role = "admin"  # skip the driver's own check: the parties refuse
        with pytest.raises(puma.AccessError, match="run is not allowed for a driver whose role is client"):
            client.run(lambda: puma.rank())
    with connect(deployment, "owner") as owner:  # an owner cannot either
        owner.role = "admin"
        with pytest.raises(puma.AccessError, match="role is owner"):
            owner.run(puma.rank)


def test_a_client_cannot_replace_save_or_delete_an_owners_model(deployment, owned) -> None:
    with connect(deployment, "client") as client:
        with pytest.raises(puma.AccessError, match="install is not allowed for a driver whose role is client"):
            puma.secure(small_bert(seed=1), cluster=client, name="owned-bert")
        with pytest.raises(puma.AccessError, match="uninstall is not allowed"):
            client.call(Verb.UNINSTALL, {"name": "owned-bert"})
        with pytest.raises(puma.AccessError, match="save_shares is not allowed"):
            client.call(Verb.SAVE_SHARES, {"name": "owned-bert", "directory": None})
    # another owner may install models of its own, but not replace, save or delete this one
    with connect(deployment, "mallory") as mallory:
        with pytest.raises(
            puma.AccessError, match="'owned-bert' is taken by a model that driver 'mallory' does not own"
        ):
            puma.secure(small_bert(seed=1), cluster=mallory, name="owned-bert")
        # refused alike whether or not the model exists, and without naming its owner
        for name in ("owned-bert", "no-such-model"):
            for verb in (Verb.UNINSTALL, Verb.SAVE_SHARES):
                args = {"name": name} if verb is Verb.UNINSTALL else {"name": name, "directory": None}
                with pytest.raises(puma.AccessError, match=f"^driver 'mallory' owns no model named '{name}'$"):
                    mallory.call(verb, args)
        with pytest.raises(puma.AccessError, match="only an admin driver names a directory"):
            mallory.call(Verb.LOAD_SHARES, {"name": None, "directory": "/tmp"})
    assert answers_like(owned, deployment)  # the owner's model is untouched


def test_a_model_answers_only_the_clients_it_names(deployment, owned) -> None:
    with connect(deployment, "other") as other:
        # a model that does not name the driver and one that does not exist are refused alike
        for name in ("owned-bert", "no-such-model"):
            with pytest.raises(puma.AccessError, match=f"^no model named '{name}' that driver 'other' may call$"):
                puma.SecureModel.by_name(name, other)
            onehot = puma.private(torch.nn.functional.one_hot(ids(), 40), dtype=torch.int64)
            with pytest.raises(puma.AccessError, match=f"^no model named '{name}' that driver 'other' may call$"):
                other.call(Verb.FORWARD, {"model": name, "onehot": onehot, "inputs": {}})
    with connect(deployment, "mallory") as mallory:  # owning other models gives no access
        with pytest.raises(puma.AccessError):
            puma.SecureModel.by_name("owned-bert", mallory)


def test_a_session_belongs_to_the_driver_that_opened_it(deployment, owned) -> None:
    with connect(deployment, "client") as victim, connect(deployment, "other") as thief:
        model = puma.SecureModel.by_name("owned-bert", victim)
        victim.reset_stats()
        own_session = thief.session
        thief.session = victim.session
        for verb in (Verb.STATS, Verb.RESET_STATS, Verb.CLOSE, Verb.COSTS_START):
            with pytest.raises(puma.AccessError, match="belongs to another driver"):
                thief.call(verb, {})
        with pytest.raises(puma.PartyError, match="exists"):  # no re-keying another's session
            thief._open()
        thief.session = own_session
        # the victim's session is intact: its counters untouched, its model answers
        assert sum(s.messages for s in victim.stats()) == 0
        out = model(input_ids=ids())
    with torch.no_grad():
        assert float((out.last_hidden_state - owned(input_ids=ids()).last_hidden_state).abs().max()) <= 1e-2


def test_an_owner_cannot_load_another_owners_share_files(deployment, owned) -> None:
    with connect(deployment, "owner") as owner:
        secured = puma.secure(small_bert(seed=2), cluster=owner, name="owner-saved")
        puma.save_shares(secured)
        secured.close()
    with connect(deployment, "mallory") as mallory:
        with pytest.raises(puma.AccessError, match="holds a model of 'owner', not of 'mallory'"):
            puma.load_shares(mallory, "owner-saved")
    with connect(deployment, "owner") as owner:  # its owner can
        assert puma.load_shares(owner, "owner-saved").key == "owner-saved"


def test_a_waiting_driver_sees_its_place_and_is_served_after_its_timeout(deployment, owned) -> None:
    """Two drivers at once: the parties queue the second's request behind the first's long
    job and tell it its place; it is served later than its timeout would have allowed."""
    started = threading.Event()
    seconds: list[float] = []

    def long_job() -> None:
        with connect(deployment, "admin") as admin:
            x = torch.randn(48, 48, generator=torch.Generator().manual_seed(0)) * 0.1
            started.set()
            begin = time.monotonic()
            admin.run(lambda v: [v := (v @ v).tanh() for _ in range(600)][-1], puma.private(x))
            seconds.append(time.monotonic() - begin)

    worker = threading.Thread(target=long_job)
    worker.start()
    started.wait(30)
    time.sleep(1.0)  # the admin's job is running
    places: list[int] = []
    begin = time.monotonic()
    with puma.Cluster.from_config(deployment.config, key=deployment.keys["client"], on_queue=places.append) as client:
        assert answers_like_on(client, owned)
    waited = time.monotonic() - begin
    worker.join()
    assert places and places[0] >= 1, places  # it heard its place behind the running job
    assert waited > client.timeout and seconds, (waited, seconds)  # and waited longer than a timeout, unharmed


def answers_like_on(cluster: puma.Cluster, model: BertModel) -> bool:
    out = puma.SecureModel.by_name("owned-bert", cluster)(input_ids=ids())
    with torch.no_grad():
        want = model(input_ids=ids()).last_hidden_state
    return float((out.last_hidden_state - want).abs().max()) <= 1e-2


def test_an_owner_cannot_overwrite_another_owners_share_files(deployment) -> None:
    """Share files live under the party's shares_dir by model name: a second owner that
    reuses the name of a saved (and since uninstalled) model may not write over its files."""
    with connect(deployment, "owner") as owner:
        first = puma.save_shares(puma.secure(small_bert(), cluster=owner, name="saved-bert", clients=["client"]))
        owner.call(Verb.UNINSTALL, {"name": "saved-bert"})
    before = [Path(p).read_bytes() for p in first]
    with connect(deployment, "mallory") as mallory:
        puma.secure(small_bert(seed=3), cluster=mallory, name="saved-bert", clients=["client"])
        with pytest.raises(puma.AccessError, match="holds another driver's model of the same name"):
            mallory.call(Verb.SAVE_SHARES, {"name": "saved-bert", "directory": None})
        mallory.call(Verb.UNINSTALL, {"name": "saved-bert"})
    assert [Path(p).read_bytes() for p in first] == before
    with connect(deployment, "owner") as owner:  # the owner's files still load, as the owner's
        assert puma.load_shares(owner, "saved-bert").key == "saved-bert"
        owner.call(Verb.UNINSTALL, {"name": "saved-bert"})
