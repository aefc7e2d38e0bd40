"""MONAI Label 0.8.5 app serving this bundle's wound segmentation (inference only).

    monailabel start_server --app scripts/monailabel_app --studies <folder of label maps> \
        [--conf bundle /path/to/bundle] [--conf output_dir /path]

``bundle`` defaults to the bundle this app belongs to. See docs/deployment.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaw_wounds import JawWoundInferTask  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[2]


class JawWoundsApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.bundle = Path(conf.get("bundle", BUNDLE)).resolve()
        metadata = json.loads((self.bundle / "configs" / "metadata.json").read_text())
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=metadata["name"],
            description=metadata["description"],
            version=metadata["version"],
        )

    def init_infers(self):
        return {"jaw_wounds": JawWoundInferTask(str(self.bundle), self.conf, output_dir=self.conf.get("output_dir"))}
