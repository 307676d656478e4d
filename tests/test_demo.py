"""The storefront demo's walk (serving/demo_client.py) against a real server: the checks it
prints are computed from the answers and the catalogue, so they can say BROKEN."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures_grpc import RunningServer, bundle_dir, memory_server  # noqa: F401


def test_demo_shows_category_lists_and_checks_the_filter(
    memory_server: RunningServer, bundle_dir: Path  # noqa: F811
) -> None:
    from serving.demo_client import run_storefront_demo

    text = run_storefront_demo(memory_server.target, bundle_dir)
    assert "Popular(category=" in text
    assert "of the unfiltered answer left: excluded" in text  # the item it asked to leave out
    assert "every item in stock, at most 20.00, not excluded" in text
    assert "BROKEN" not in text and "NOT" not in text and "STILL" not in text


def test_demo_reads_a_synthetic_stores_catalogue_beside_its_ground_truth(tmp_path: Path) -> None:
    from serving.demo_client import _load_info

    truth = tmp_path / "ground_truth.json"
    truth.write_text('{"pairs": [["i1", "i2"]]}', encoding="utf-8")
    assert _load_info(truth) == {"pairs": [["i1", "i2"]]}  # no items.csv: no catalogue
    (tmp_path / "items.csv").write_text(
        "item_id,title,category,price,in_stock\ni1,A,frozen,14.99,true\ni2,B,baby,30,false\n",
        encoding="utf-8",
    )
    assert _load_info(truth)["catalog"] == {
        "i1": ("frozen", 14.99, True), "i2": ("baby", 30.0, False)}


def test_demo_checks_the_planted_partner_of_a_store_with_one_pair(
    memory_server: RunningServer, tmp_path: Path  # noqa: F811
) -> None:
    """A store with a single planted pair (a small catalogue) still gets its cart and its
    partner check; the two-item cart needs a second pair."""
    from serving.demo_client import run_storefront_demo

    truth = tmp_path / "ground_truth.json"
    truth.write_text('{"pairs": [["sku-00", "sku-25"]]}', encoding="utf-8")
    text = run_storefront_demo(memory_server.target, truth)
    assert "Cart holding sku-00\n" in text, text
    assert "planted partner of sku-00, sku-25, is in the answer" in text, text
