//! Nothing to link: the cases live in `tests/`, where one table of HTTP and WebSocket cases runs
//! against a Poem app and a Salvo app built alike, on real listeners, and both must answer as
//! the table says (and therefore alike).
