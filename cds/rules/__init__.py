"""The rule families, compiled per catalogue by ``cds.engine.Engine``; pure, no I/O."""

from cds.rules.common import NATIONAL_RECOGNITION_POLICY, RuleContext
from cds.rules.duplicates import DuplicateRule
from cds.rules.gene_tests import GeneTestRule, not_in_catalogue
from cds.rules.recognition import RecognitionRule
from cds.rules.sendout import SendoutRule

__all__ = [
    "NATIONAL_RECOGNITION_POLICY",
    "DuplicateRule",
    "GeneTestRule",
    "RecognitionRule",
    "RuleContext",
    "SendoutRule",
    "not_in_catalogue",
]
