/* A small JSON reader for the fake NVML's fault-injection config (no dependencies beyond libc).
 *
 * Parses a whole document into a tree of fake_json_t values; numbers are doubles (exact up to 2^53).
 * Errors give the byte offset and a reason, so a broken config is reported, never half-applied.
 */
#ifndef FAKE_JSON_H
#define FAKE_JSON_H

typedef enum { FJ_NULL, FJ_BOOL, FJ_NUMBER, FJ_STRING, FJ_ARRAY, FJ_OBJECT } fake_json_type_t;

typedef struct fake_json {
    fake_json_type_t type;
    double number;            /* FJ_NUMBER, and FJ_BOOL as 0/1 */
    char *string;             /* FJ_STRING */
    int count;                /* FJ_ARRAY / FJ_OBJECT: number of items */
    char **keys;              /* FJ_OBJECT: item keys */
    struct fake_json *items;  /* FJ_ARRAY / FJ_OBJECT: item values */
} fake_json_t;

/* Parse text into *out. Returns 0 on success; else -1 with a message in err (err_len bytes). */
__attribute__((visibility("hidden"))) int fake_json_parse(const char *text, fake_json_t *out, char *err, int err_len);

/* Free what fake_json_parse allocated inside v (not v itself). */
__attribute__((visibility("hidden"))) void fake_json_free(fake_json_t *v);

/* The value under key in an object, or NULL. */
__attribute__((visibility("hidden"))) const fake_json_t *fake_json_get(const fake_json_t *object, const char *key);

#endif
