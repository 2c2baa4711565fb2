"""Births and population by municipality: the signal that tells, years ahead, how many
children will reach a stage (NCES and England's DfE project enrollment from them).

`tables` reads them in the documented format (a folder of CSV or Parquet files) into typed
frames; `known` attaches to the census panel what is known of them at each origin year,
and nothing later, so the features and the `Demografia` baseline never see the future.
Without demographic data the product runs as it does without them.
"""
