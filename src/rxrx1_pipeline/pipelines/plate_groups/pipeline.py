"""Plate-group discovery: wells -> siRNA groups, train plate groups, candidate plate layouts."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    assign_train_plate_groups,
    discover_sirna_groups,
    tabulate_plate_layouts,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(discover_sirna_groups, "wells", "sirna_groups", name="discover_sirna_groups"),
        Node(assign_train_plate_groups, ["wells", "sirna_groups"], "train_plate_groups",
             name="assign_train_plate_groups"),
        Node(tabulate_plate_layouts, "train_plate_groups", "plate_layouts", name="tabulate_plate_layouts"),
    ])
