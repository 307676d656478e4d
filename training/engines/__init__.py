"""Training engines: where the nightly job runs.

`local` is `training.pipeline.train` (numpy, scipy and `implicit` on one machine); `spark` is
`training.engines.spark.train_spark` (Apache Spark, for logs that outgrow one machine). Both
write the same bundle (`recsvc.bundle`), so the publisher and the server never know which one
ran. Engines import `recsvc` and `training`, never `serving`; pyspark is imported only by the
spark engine and only installed with the `recsvc[spark]` extra.
"""

ENGINES = ("local", "spark")
