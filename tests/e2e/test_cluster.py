"""The test cluster itself: the ground the other tests stand on."""


def test_cluster_is_postgresql_15_with_utf8_databases(cluster, new_database):
    d = new_database()
    assert d.value("SELECT current_setting('server_version_num')::int / 10000") == 15
    assert d.value("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()") == "UTF8"
    assert d.value("SELECT inet_server_addr()::text") == "127.0.0.1/32"
