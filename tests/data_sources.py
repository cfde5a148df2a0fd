"""The data sources the tests expect under the data root: one list, so a new database is
added once (PhysioNet e joined a, b and d; PASCAL has sets A and B)."""

PHYSIONET = ("physionet-a", "physionet-b", "physionet-d", "physionet-e")
SOURCES = ("pascal-a", "pascal-b", *PHYSIONET)
