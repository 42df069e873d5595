"""Stateful defenses: a classifier behind a detector of similar queries (registry keyed by name)."""

from dpplat.audits.defenses.base import (POLICIES, Calibration, DefenseStats, Response, StatefulDefense,
                                         available_defenses, check_images, create_defense, register_defense)
from dpplat.audits.defenses import blacklight, none, piha, stateful_detection  # noqa: F401  (registers them)
from dpplat.audits.defenses.blacklight import Blacklight
from dpplat.audits.defenses.piha import PIHA
from dpplat.audits.defenses.stateful_detection import StatefulDetection

__all__ = ["POLICIES", "Blacklight", "Calibration", "DefenseStats", "PIHA", "Response", "StatefulDefense",
           "StatefulDetection", "available_defenses", "check_images", "create_defense", "register_defense"]
