"""The packaged pipeline configs (installed as ``airrep.configs``): ``airrep run -c tiny``."""
