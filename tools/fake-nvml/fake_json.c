/* A small recursive-descent JSON reader for the fake NVML config; see fake_json.h. */
#include "fake_json.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FJ_MAX_DEPTH 32

typedef struct {
    const char *text;
    size_t pos;
    char *err;
    int err_len;
} parser_t;

static int fail(parser_t *p, const char *why) {
    if (p->err && p->err_len > 0)
        snprintf(p->err, (size_t)p->err_len, "offset %zu: %s", p->pos, why);
    return -1;
}

static void skip_space(parser_t *p) {
    while (p->text[p->pos] && isspace((unsigned char)p->text[p->pos])) p->pos++;
}

static int parse_value(parser_t *p, fake_json_t *out, int depth);

static int parse_string(parser_t *p, char **out) {
    size_t cap = 16, len = 0;
    char *s = malloc(cap);
    if (!s) return fail(p, "out of memory");
    p->pos++; /* opening quote */
    for (;;) {
        char c = p->text[p->pos];
        if (c == '\0') { free(s); return fail(p, "unterminated string"); }
        if (c == '"') { p->pos++; break; }
        if (c == '\\') {
            char e = p->text[++p->pos];
            switch (e) {
            case '"': case '\\': case '/': c = e; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            default: free(s); return fail(p, "unsupported escape in string (\\u is not needed by the config)");
            }
        }
        if (len + 2 > cap) {
            char *bigger = realloc(s, cap *= 2);
            if (!bigger) { free(s); return fail(p, "out of memory"); }
            s = bigger;
        }
        s[len++] = c;
        p->pos++;
    }
    s[len] = '\0';
    *out = s;
    return 0;
}

static int append(parser_t *p, fake_json_t *v, char *key, fake_json_t *item) {
    fake_json_t *items = realloc(v->items, sizeof(*items) * (size_t)(v->count + 1));
    if (!items) return fail(p, "out of memory");
    v->items = items;
    if (v->type == FJ_OBJECT) {
        char **keys = realloc(v->keys, sizeof(*keys) * (size_t)(v->count + 1));
        if (!keys) return fail(p, "out of memory");
        v->keys = keys;
        v->keys[v->count] = key;
    }
    v->items[v->count++] = *item;
    return 0;
}

static int parse_container(parser_t *p, fake_json_t *out, int depth, int is_object) {
    char close = is_object ? '}' : ']';
    out->type = is_object ? FJ_OBJECT : FJ_ARRAY;
    p->pos++;
    skip_space(p);
    if (p->text[p->pos] == close) { p->pos++; return 0; }
    for (;;) {
        char *key = NULL;
        fake_json_t item;
        memset(&item, 0, sizeof(item));
        skip_space(p);
        if (is_object) {
            if (p->text[p->pos] != '"') return fail(p, "expected a string key");
            if (parse_string(p, &key)) return -1;
            skip_space(p);
            if (p->text[p->pos] != ':') { free(key); return fail(p, "expected ':'"); }
            p->pos++;
        }
        if (parse_value(p, &item, depth + 1) || append(p, out, key, &item)) {
            free(key);
            fake_json_free(&item);
            return -1;
        }
        skip_space(p);
        if (p->text[p->pos] == ',') { p->pos++; continue; }
        if (p->text[p->pos] == close) { p->pos++; return 0; }
        return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_literal(parser_t *p, const char *word, fake_json_type_t type, double number, fake_json_t *out) {
    size_t n = strlen(word);
    if (strncmp(p->text + p->pos, word, n) != 0) return fail(p, "unexpected character");
    p->pos += n;
    out->type = type;
    out->number = number;
    return 0;
}

static int parse_value(parser_t *p, fake_json_t *out, int depth) {
    if (depth > FJ_MAX_DEPTH) return fail(p, "nested too deeply");
    skip_space(p);
    char c = p->text[p->pos];
    if (c == '{') return parse_container(p, out, depth, 1);
    if (c == '[') return parse_container(p, out, depth, 0);
    if (c == '"') { out->type = FJ_STRING; return parse_string(p, &out->string); }
    if (c == 't') return parse_literal(p, "true", FJ_BOOL, 1, out);
    if (c == 'f') return parse_literal(p, "false", FJ_BOOL, 0, out);
    if (c == 'n') return parse_literal(p, "null", FJ_NULL, 0, out);
    if (c == '-' || isdigit((unsigned char)c)) {
        char *end;
        out->type = FJ_NUMBER;
        out->number = strtod(p->text + p->pos, &end);
        p->pos = (size_t)(end - p->text);
        return 0;
    }
    return fail(p, c ? "unexpected character" : "unexpected end of input");
}

int fake_json_parse(const char *text, fake_json_t *out, char *err, int err_len) {
    parser_t p = {text, 0, err, err_len};
    memset(out, 0, sizeof(*out));
    if (parse_value(&p, out, 0)) { fake_json_free(out); return -1; }
    skip_space(&p);
    if (text[p.pos] != '\0') { fake_json_free(out); return fail(&p, "trailing characters after the document"); }
    return 0;
}

void fake_json_free(fake_json_t *v) {
    for (int i = 0; i < v->count; i++) {
        fake_json_free(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
    memset(v, 0, sizeof(*v));
}

const fake_json_t *fake_json_get(const fake_json_t *object, const char *key) {
    if (!object || object->type != FJ_OBJECT) return NULL;
    for (int i = 0; i < object->count; i++)
        if (strcmp(object->keys[i], key) == 0) return &object->items[i];
    return NULL;
}
