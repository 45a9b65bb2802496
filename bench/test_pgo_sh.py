"""bench/pgo.sh refuses bad settings by name before it builds anything (run by scripts/test.sh)."""

import os
import shutil
import stat
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "pgo.sh")


class PgoShRefuses(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.pgo_dir = os.path.join(self.tmp, "pgo")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def run_script(self, **env):
        full = dict(os.environ, PGO_DIR=self.pgo_dir)
        full.update(env)
        return subprocess.run(["bash", SCRIPT], env=full, capture_output=True, text=True, timeout=60)

    def refused(self, r, words):
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(words, r.stderr)
        self.assertNotIn("building", r.stderr)
        self.assertFalse(os.path.exists(self.pgo_dir), "created its directory before refusing")

    def test_a_training_time_that_is_not_a_whole_number_of_seconds(self):
        self.refused(self.run_script(TRAIN_D="5s"), "TRAIN_D must be a whole number of seconds, at least 1, not `5s`")

    def test_a_training_time_of_zero(self):
        self.refused(self.run_script(TRAIN_D="0"), "not `0`")

    def test_a_profile_directory_with_whitespace(self):
        self.pgo_dir = os.path.join(self.tmp, "p g o")
        self.refused(self.run_script(), "PGO_DIR must not contain whitespace")

    @unittest.skipUnless(shutil.which("rustc"), "needs rustc")
    def test_an_llvm_profdata_that_is_not_there(self):
        missing = os.path.join(self.tmp, "no-such-llvm-profdata")
        self.refused(self.run_script(LLVM_PROFDATA=missing), f"LLVM_PROFDATA=`{missing}` is not an executable file")

    @unittest.skipUnless(shutil.which("rustc"), "needs rustc")
    def test_an_llvm_profdata_of_another_llvm_than_rustcs(self):
        fake = os.path.join(self.tmp, "llvm-profdata")
        with open(fake, "w", encoding="utf-8") as f:
            f.write("#!/bin/sh\necho 'Debian LLVM version 3.9.1'\n")
        os.chmod(fake, stat.S_IRWXU)
        self.refused(self.run_script(LLVM_PROFDATA=fake), f"`{fake}` is not LLVM ")


if __name__ == "__main__":
    unittest.main()
