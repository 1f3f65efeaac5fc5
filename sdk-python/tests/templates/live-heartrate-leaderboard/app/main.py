from app.pipelines.pipelines import (
    rawAntHRPipeline,
    processedAntHRPipeline,
    unifiedHRPipeline,
    bluetoothHRPipeline,
)
