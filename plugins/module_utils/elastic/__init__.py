# Pure-Python building blocks of elastic_airflow.cluster (no Ansible imports).
# Used by the collection's modules and by the elastic controller.
