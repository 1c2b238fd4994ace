"""The query domain: the request, the PostgREST filter grammar, typed values and the compiler."""
