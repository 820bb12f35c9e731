"""Mixers side by side: ``mixerzoo compare`` (:mod:`mixerzoo.compare.run`) and the procedural Pathfinder task
(:mod:`mixerzoo.compare.pathfinder`, data source ``pathfinder:32`` / ``pathfinder:64``)."""
