"""The targets a benchmark prints and checks: each line says the figure, the limit and ok/MISSED.

A benchmark ends with ``sys.exit(targets.exit_code())``: non-zero when any
target was missed, so `make bench` and CI see it without reading the text.
"""


class Targets:
    def __init__(self):
        self.missed = []

    def at_most(self, name, value, limit, unit=""):
        """Print ``name: value (target <= limit): ok|MISSED`` and record a miss."""
        ok = value <= limit
        print("target %-40s %8.2f%s  (<= %g%s): %s" % (name, value, unit, limit, unit, "ok" if ok else "MISSED"))
        if not ok:
            self.missed.append(name)
        return ok

    def exit_code(self):
        if self.missed:
            print("MISSED %d target(s): %s" % (len(self.missed), ", ".join(self.missed)))
            return 1
        print("all targets met")
        return 0
