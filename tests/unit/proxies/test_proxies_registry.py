"""Proxy registry: entry points of real (temporary) distributions next to the installed built-ins, and fake
entry points (the registry's lookup monkeypatched) for plugins that misbehave at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from proxyano_plugin.proxies import (
    DuplicateProxyError,
    ProxyArgumentError,
    ProxyError,
    ProxyLoadError,
    ProxyLoadWarning,
    ProxyValueError,
    UnknownProxyError,
    available_proxies,
    broken_proxies,
    create_proxy,
    register_proxy,
    registry,
)
from proxyano_plugin.proxies.filters import BlurProxy, EdgesProxy

BUILT_INS = {"superpixel", "blur", "edges", "identity"}
AVAILABLE = "available: blur, edges, identity, superpixel"


@dataclass
class FakeEntryPoint:
    """What the registry uses of an ``importlib.metadata.EntryPoint``; ``load`` runs ``target`` (the import)."""

    name: str
    value: str
    dist: Any
    target: Callable[[], Any]

    def load(self) -> Any:
        return self.target()


def fake(name: str, dist: str, version: str = "1.0", target: Callable[[], Any] = lambda: EdgesProxy) -> FakeEntryPoint:
    return FakeEntryPoint(
        name, f"{dist.replace('-', '_')}:factory", SimpleNamespace(name=dist, version=version), target
    )


def raises(error: BaseException) -> Callable[[], Any]:
    def target() -> Any:
        raise error

    return target


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Add fake entry points after the installed ones (the built-ins), as the registry sees them."""
    installed = registry._entry_points()

    def register(*entries: FakeEntryPoint) -> None:
        monkeypatch.setattr(registry, "_entry_points", lambda: [*installed, *entries])

    return register


@pytest.fixture
def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install a fake distribution (dist-info + modules) on sys.path, as pip would."""

    def install_distribution(dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[proxyano_plugin.proxies]\n{lines}")
        for module, source in modules.items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
            monkeypatch.delitem(sys.modules, module, raising=False)

    monkeypatch.syspath_prepend(str(tmp_path))
    return install_distribution


def test_built_ins_are_registered_by_this_distribution() -> None:
    found = available_proxies()
    assert set(found) >= BUILT_INS
    assert all(found[name].startswith("proxyano-plugin ") for name in BUILT_INS)
    for name in BUILT_INS:
        assert create_proxy(name).name == name


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(UnknownProxyError, match=rf"^unknown proxy 'nope'; {AVAILABLE}$"):
        create_proxy("nope")
    with pytest.raises(UnknownProxyError, match=rf"^unknown proxy 'bluur' \(did you mean 'blur'\?\); {AVAILABLE}$"):
        create_proxy("bluur")


def test_bad_keyword_is_named_with_the_accepted_ones() -> None:
    message = r"^proxy 'blur' got unexpected argument\(s\) radius; it accepts: sigma$"
    with pytest.raises(ProxyArgumentError, match=message):
        create_proxy("blur", sigma=1.0, radius=3)
    typo = r"^proxy 'blur' got unexpected argument\(s\) sigmaa \(did you mean 'sigma'\?\); it accepts: sigma$"
    with pytest.raises(ProxyArgumentError, match=typo):
        create_proxy("blur", sigmaa=3)
    assert create_proxy("superpixel", n_segments=50).cache_key.startswith("superpixel(n_segments=50,")


def test_bad_value_names_the_proxy_and_stays_a_value_error() -> None:
    with pytest.raises(ProxyValueError, match=r"^proxy 'blur': sigma must be a positive number, got -1$") as caught:
        create_proxy("blur", sigma=-1)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, ValueError)


def test_every_registry_error_is_a_proxy_error() -> None:
    """A command line catches ProxyError to print the line instead of a traceback (see anomalib_cli)."""
    for error in (UnknownProxyError, DuplicateProxyError, ProxyLoadError, ProxyArgumentError, ProxyValueError):
        assert issubclass(error, ProxyError)
    assert issubclass(ProxyArgumentError, TypeError)
    assert issubclass(UnknownProxyError, ValueError)


def test_third_party_proxy_is_found_and_built(install) -> None:
    install(
        "fake-plugin",
        "1.2",
        {"shifted": "fake_plugin_module:Shifted"},
        {
            "fake_plugin_module": """
                class Shifted:
                    name = "shifted"

                    def __init__(self, amount=0.1):
                        self.cache_key = f"shifted(amount={amount!r})"
                        self.amount = amount

                    def __call__(self, images):
                        return images + self.amount
            """
        },
    )
    assert available_proxies()["shifted"] == "fake-plugin 1.2"
    assert create_proxy("shifted", amount=0.5).cache_key == "shifted(amount=0.5)"


def test_a_plugin_cannot_shadow_a_built_in(install) -> None:
    install("fake-dup", "1.0", {"blur": "fake_dup_module:Blur"}, {"fake_dup_module": "Blur = None\n"})
    ignored = (
        r"^proxy 'blur' of fake-dup 1.0 \(fake_dup_module:Blur\) is ignored: 'blur' is a built-in proxy of "
        r"proxyano-plugin \S+, which takes precedence; rename that plugin's entry point$"
    )
    with pytest.warns(ProxyLoadWarning, match=ignored):
        found = available_proxies()
    assert found["blur"].startswith("proxyano-plugin ")
    with pytest.warns(ProxyLoadWarning, match=ignored):
        assert isinstance(create_proxy("blur", sigma=3), BlurProxy)
    assert broken_proxies() == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other names are not even warned about
        assert create_proxy("edges").name == "edges"


def test_a_shadowing_plugin_is_never_imported(plugins) -> None:
    plugins(fake("superpixel", "fake-shadow", target=raises(AssertionError("imported"))))
    with pytest.warns(ProxyLoadWarning, match=r"^proxy 'superpixel' of fake-shadow 1.0 .* is ignored"):
        assert set(available_proxies()) == BUILT_INS


def test_a_duplicate_among_plugins_disables_only_that_name(plugins) -> None:
    plugins(fake("twin", "fake-a", "1.0"), fake("twin", "fake-b", "2.0"), fake("solo", "fake-c", "0.3"))
    both = r"proxy name 'twin' is registered by fake-a 1.0 \(fake_a:factory\) and fake-b 2.0 \(fake_b:factory\)"
    with pytest.warns(ProxyLoadWarning, match=rf"^{both}; uninstall one of them; leaving it out$"):
        found = available_proxies()
    assert set(found) == {*BUILT_INS, "solo"}
    assert found["solo"] == "fake-c 0.3"
    assert list(broken_proxies()) == ["twin"]
    with pytest.raises(DuplicateProxyError, match=rf"^{both}; uninstall one of them$"):
        create_proxy("twin")
    assert create_proxy("solo").name == "edges"
    with pytest.raises(UnknownProxyError, match=r"available: blur, edges, identity, solo, superpixel; broken: twin \("):
        create_proxy("nope")


def test_failing_import_is_listed_as_broken_and_the_others_keep_working(install) -> None:
    install(
        "fake-broken", "2.0", {"broken": "fake_broken_module:Proxy"}, {"fake_broken_module": "import not_a_module\n"}
    )
    reason = (
        "proxy 'broken' from fake-broken 2.0 failed to import (fake_broken_module:Proxy): "
        "ModuleNotFoundError: No module named 'not_a_module'"
    )
    with pytest.warns(ProxyLoadWarning, match=r"proxy 'broken' from fake-broken 2.0 failed to import .*not_a_module"):
        found = available_proxies()
    assert "broken" not in found
    assert set(found) == BUILT_INS
    assert broken_proxies() == {"broken": reason}
    with pytest.raises(ProxyLoadError, match=r"ModuleNotFoundError: No module named 'not_a_module'$"):
        create_proxy("broken")
    listing = (
        rf"^unknown proxy 'brokn'; {AVAILABLE}; broken: broken \(see proxyano_plugin.proxies.broken_proxies\(\)\)$"
    )
    with pytest.raises(UnknownProxyError, match=listing):  # suggestions come from the usable names only
        create_proxy("brokn")
    assert isinstance(create_proxy("blur"), BlurProxy)


def test_sys_exit_at_import_of_a_real_plugin_is_contained(install) -> None:
    install("fake-exit", "0.1", {"quits": "fake_exit_module:Proxy"}, {"fake_exit_module": "import sys\nsys.exit(3)\n"})
    with pytest.warns(ProxyLoadWarning, match=r"proxy 'quits' from fake-exit 0.1 failed to import"):
        assert set(available_proxies()) == BUILT_INS
    assert broken_proxies()["quits"].endswith("(fake_exit_module:Proxy): SystemExit: 3")
    with pytest.raises(ProxyLoadError, match=r"SystemExit: 3$"):
        create_proxy("quits")


class PluginPanic(BaseException):
    """Not an Exception: what a careless plugin might raise to 'stop' at import."""


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (SystemExit(), "SystemExit"),
        (SystemExit("no GPU, giving up"), "SystemExit: no GPU, giving up"),
        (PluginPanic("multi\nline"), "PluginPanic: multi line"),
        (RuntimeError("boom"), "RuntimeError: boom"),
        (ImportError("cannot import name 'x'"), "ImportError: cannot import name 'x'"),
    ],
)
def test_nothing_a_plugin_raises_at_import_stops_the_others(plugins, error: BaseException, reason: str) -> None:
    plugins(fake("early", "fake-early"), fake("bad", "fake-bad", target=raises(error)), fake("late", "fake-late"))
    with pytest.warns(ProxyLoadWarning):
        found = available_proxies()
    assert set(found) == {*BUILT_INS, "early", "late"}
    assert broken_proxies() == {"bad": f"proxy 'bad' from fake-bad 1.0 failed to import (fake_bad:factory): {reason}"}
    with pytest.raises(ProxyLoadError, match=r"^proxy 'bad' from fake-bad 1.0 failed to import"):
        create_proxy("bad")
    assert create_proxy("late").name == "edges"


def test_ctrl_c_during_a_plugin_import_still_interrupts(plugins) -> None:
    plugins(fake("slow", "fake-slow", target=raises(KeyboardInterrupt())))
    with pytest.raises(KeyboardInterrupt):
        available_proxies()


def test_a_non_callable_target_is_broken(plugins) -> None:
    plugins(fake("data", "fake-data", target=lambda: 42))
    assert broken_proxies() == {
        "data": "proxy 'data' from fake-data 1.0 points at fake_data:factory, which is not callable"
    }


def test_factory_must_build_a_proxy(install) -> None:
    install("fake-odd", "0.1", {"odd": "fake_odd_module:make"}, {"fake_odd_module": "def make():\n    return 42\n"})
    with pytest.raises(ProxyLoadError, match=r"proxy 'odd' .* built a int, which is not a ProxyExtractor"):
        create_proxy("odd")


def test_imports_stay_lazy() -> None:
    """The registry imports no torch; creating one proxy imports only that proxy's module."""
    code = (
        "import sys; import proxyano_plugin.proxies as p; print('torch' in sys.modules);"
        "p.create_proxy('blur'); print('proxyano_plugin.proxies.superpixel' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh in-process registry, so that registrations do not leak into other tests."""
    monkeypatch.setattr(registry, "_IN_PROCESS", {})


def test_register_proxy_adds_a_proxy_in_process(in_process: None) -> None:
    @register_proxy("coarse-blur")
    def coarse_blur(sigma: float = 4.0) -> BlurProxy:
        return BlurProxy(sigma=sigma)

    assert available_proxies()["coarse-blur"] == "register_proxy in this process"
    proxy = create_proxy("coarse-blur", sigma=2.0)
    assert isinstance(proxy, BlurProxy)
    assert proxy.sigma == 2.0
    with pytest.raises(ProxyArgumentError, match="accepts: sigma"):
        create_proxy("coarse-blur", radius=3)
    from proxyano_plugin import ProxyAno  # heavy: only this test of the module needs the model

    assert ProxyAno(proxy="coarse-blur").proxy_extractor.name == proxy.name


def test_register_proxy_refuses_an_installed_name(in_process: None) -> None:
    with pytest.raises(DuplicateProxyError, match="'blur' is already registered by proxyano-plugin"):
        register_proxy("blur")(BlurProxy)
    assert isinstance(create_proxy("blur"), BlurProxy)


def test_register_proxy_again_replaces_with_a_warning(in_process: None) -> None:
    register_proxy("mine")(BlurProxy)
    with pytest.warns(ProxyLoadWarning, match="registered in this process before"):
        register_proxy("mine")(EdgesProxy)
    assert isinstance(create_proxy("mine"), EdgesProxy)


@pytest.mark.parametrize("name", ["", None])
def test_register_proxy_needs_a_name(name: Any) -> None:
    with pytest.raises(TypeError, match="non-empty proxy name"):
        register_proxy(name)
