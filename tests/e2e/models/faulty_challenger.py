"""A challenger that goes wrong in production in one way (MLflow "models from code": this file is
logged with the model, so the endpoint's process loads it without the tests on its path).

``model_config["fault"]``: ``error`` raises on transactions over 150 (some inputs only), ``slow``
answers after 300 ms, ``shift`` adds 0.3 to every score (capped at 1); ``none`` is the champion's
booster as it is (a good challenger).
"""

import time

import mlflow
import numpy as np
import xgboost as xgb
from mlflow.pyfunc import PythonModel


class FaultyChallenger(PythonModel):
    def load_context(self, context):
        self.booster = xgb.Booster()
        self.booster.load_model(context.artifacts["booster"])
        self.booster.set_param({"nthread": 1})
        self.fault = context.model_config["fault"]

    def predict(self, context, model_input, params=None):
        x = model_input.to_numpy(dtype=np.float32)
        if self.fault == "error" and (model_input["amount"] > 150).any():
            raise ValueError("amount out of the range this model handles")
        if self.fault == "slow":
            time.sleep(0.3)
        out = self.booster.inplace_predict(x)
        if self.fault == "shift":
            out = np.minimum(out + 0.3, 1.0)
        return out


mlflow.models.set_model(FaultyChallenger())
