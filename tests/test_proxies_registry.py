"""Proxy registry: entry points of real (temporary) distributions next to the installed built-ins."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxyano_plugin.proxies import (
    DuplicateProxyError,
    ProxyArgumentError,
    ProxyLoadError,
    ProxyLoadWarning,
    UnknownProxyError,
    available_proxies,
    create_proxy,
)
from proxyano_plugin.proxies.filters import BlurProxy

BUILT_INS = {"superpixel", "blur", "edges", "identity"}


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
    listing = r"unknown proxy 'nope'; available: blur, edges, identity, .*superpixel"
    with pytest.raises(UnknownProxyError, match=listing):
        create_proxy("nope")


def test_bad_keyword_is_named_with_the_accepted_ones() -> None:
    message = r"proxy 'blur' got unexpected argument\(s\) radius; it accepts: sigma$"
    with pytest.raises(ProxyArgumentError, match=message):
        create_proxy("blur", sigma=1.0, radius=3)
    assert create_proxy("superpixel", n_segments=50).cache_key.startswith("superpixel(n_segments=50,")


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


def test_duplicate_name_names_both_providers(install) -> None:
    install("fake-dup", "1.0", {"blur": "fake_dup_module:Blur"}, {"fake_dup_module": "Blur = None\n"})
    both = r"'blur' is registered by fake-dup 1.0 \(fake_dup_module:Blur\) and proxyano-plugin \S+ \(.*\); uninstall"
    with pytest.raises(DuplicateProxyError, match=both):
        create_proxy("blur")
    with pytest.raises(DuplicateProxyError, match=both):
        available_proxies()
    assert create_proxy("edges").name == "edges"  # other names are unaffected


def test_failing_import_warns_and_the_others_keep_working(install) -> None:
    install(
        "fake-broken", "2.0", {"broken": "fake_broken_module:Proxy"}, {"fake_broken_module": "import not_a_module\n"}
    )
    with pytest.warns(ProxyLoadWarning, match=r"proxy 'broken' from fake-broken 2.0 failed to import .*not_a_module"):
        found = available_proxies()
    assert "broken" not in found
    assert set(found) >= BUILT_INS
    with pytest.raises(ProxyLoadError, match="ModuleNotFoundError: No module named 'not_a_module'"):
        create_proxy("broken")
    assert isinstance(create_proxy("blur"), BlurProxy)


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
