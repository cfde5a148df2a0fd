"""The one record type every loader gives and training, splits and the data tools read.

Its own module so that each data set's loader (``train.datasets`` for PASCAL and
PhysioNet, ``train.circor`` for CirCor) builds it without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Auscultation:
    """Where a recording was taken and what the clinicians found in that patient."""

    location: str  # AV, PV, TV, MV or Phc
    murmur: str  # the patient's finding: Present, Absent or Unknown
    murmur_here: bool | None  # heard at this location (None: the finding is Unknown)
    outcome: str  # Abnormal or Normal: the cardiologist's overall judgement
    campaign: str  # CC2014 or CC2015
    systolic_grade: str | None  # I/VI, II/VI, III/VI
    systolic_timing: str | None  # Early-systolic, Holosystolic, Mid-systolic, Late-systolic
    diastolic_grade: str | None
    diastolic_timing: str | None
    segmentation: Path | None  # the expert S1/S2 .tsv, when the source has one


@dataclass(frozen=True)
class Recording:
    """One labelled or unlabelled recording, as training and the data tools see it.

    ``label`` keeps the data set's fine condition (PASCAL ``normal``, ``murmur``,
    ``extrahls``, ``extrastole``, ``artifact``; PhysioNet ``normal``, ``abnormal``; None
    when unlabelled). A :class:`LabelSet` maps it to the classes one model learns, so
    the loader never has to know which model is being trained.
    """

    path: Path
    label: str | None
    group: str  # unit kept inside one split: "<source>/<patient or session or file>"
    source: str  # database: pascal-a, pascal-b, physionet-a, physionet-b, ...
    noisy: bool  # annotators' noisy mark (PASCAL) or poor signal quality (PhysioNet SQI)
    sample_rate: int  # Hz, from labels.csv or the .hea header
    seconds: float  # length, from labels.csv or the .hea header
    patient: str | None = None  # a real subject id, only where the data set has one
    dataset: str = ""  # "pascal", "physionet2016" or "circor2022"
    auscultation: Auscultation | None = None  # location and findings (CirCor only)

    @property
    def name(self) -> str:
        """Stable id across machines: source and file name (split fingerprints use it)."""
        return f"{self.source}/{self.path.name}"
