/* A fake libnvidia-ml.so.1 for tests and the demo: the real pynvml loads it in place of NVIDIA's library.
 *
 * Compiled against the real nvml.h (PyPI nvidia-nvml-dev), so every exported function has NVML's exact
 * signature, struct layouts and return codes. With no configuration it presents 8 healthy H100-like GPUs;
 * a JSON file named by env FAKE_NVML_CONFIG injects faults and is re-read whenever it changes, so faults can
 * be injected into a running agent. The format is documented in README.md next to this file.
 */
#include <nvml.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fake_json.h"

#define FAKE_MAX_GPUS 16
#define FAKE_DEFAULT_GPUS 8
#define FAKE_NVLINKS 18
#define FAKE_MAX_XIDS 512
#define FAKE_MAX_ERRORS 32
#define FAKE_MAX_SETS 64
#define FAKE_QUEUE 1024
#define FAKE_FUNCTION_NAME 64
#define FAKE_SUPPORTED_EVENTS (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | \
                               nvmlEventTypePState | nvmlEventTypeXidCriticalError | nvmlEventTypeClock)

/* ---- configuration ------------------------------------------------------------------------------------ */

typedef struct {
    char function[FAKE_FUNCTION_NAME];
    nvmlReturn_t code;
} fake_error_t;

typedef struct {
    int absent;                                   /* gone from the device list */
    int lost;                                     /* every call returns NVML_ERROR_GPU_IS_LOST */
    unsigned int utilization_gpu, utilization_memory;          /* percent */
    unsigned long long memory_total, memory_used;              /* bytes */
    unsigned int temperature, memory_temperature;              /* Celsius */
    unsigned int power_mw, power_limit_mw;
    unsigned int sm_clock_mhz, memory_clock_mhz;
    unsigned long long clock_event_reasons;
    unsigned long long ecc[NVML_MEMORY_ERROR_TYPE_COUNT][NVML_ECC_COUNTER_TYPE_COUNT];
    unsigned int retired_pages[NVML_PAGE_RETIREMENT_CAUSE_COUNT];
    int retired_pages_pending;
    unsigned int remapped_correctable, remapped_uncorrectable, remap_pending, remap_failure;
    unsigned int pcie_generation, pcie_max_generation, pcie_width, pcie_max_width, pcie_replays;
    unsigned int pcie_tx_kb_per_s, pcie_rx_kb_per_s;
    int nvlink_active[FAKE_NVLINKS];
    unsigned long long nvlink_errors[FAKE_NVLINKS][NVML_NVLINK_ERROR_COUNT];
    unsigned int xids[FAKE_MAX_XIDS];             /* an append-only log of XID codes */
    int xid_count;
    fake_error_t errors[FAKE_MAX_ERRORS];         /* function name -> return code, for this GPU */
    int error_count;
} fake_gpu_t;

typedef struct {
    nvmlReturn_t init_error;
    int gpu_count;
    char driver_version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    double time_seconds;                          /* < 0: real time since the library was loaded */
    fake_error_t errors[FAKE_MAX_ERRORS];         /* function name -> return code, for every GPU and call */
    int error_count;
    fake_gpu_t gpus[FAKE_MAX_GPUS];
} fake_config_t;

struct nvmlDevice_st {
    unsigned int slot;                            /* the physical GPU; its index shifts when others vanish */
};

struct nvmlEventSet_st {
    int in_use;
    unsigned long long mask[FAKE_MAX_GPUS];      /* registered event types per slot */
    nvmlEventData_t queue[FAKE_QUEUE];
    unsigned int head, tail;                      /* head == tail: empty */
};

static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static fake_config_t config, staging;
static struct nvmlDevice_st devices[FAKE_MAX_GPUS];
static struct nvmlEventSet_st event_sets[FAKE_MAX_SETS];
static int xids_delivered[FAKE_MAX_GPUS];        /* position in each GPU's XID log delivered so far */
static int init_count;
static int config_loaded;
static struct timespec loaded_at;
static char config_path[4096];
static struct stat config_stat;                  /* of the config last looked at, to notice changes */

static const struct {
    nvmlReturn_t code;
    const char *name;
    const char *text;
} return_codes[] = {
    {NVML_SUCCESS, "SUCCESS", "Success"},
    {NVML_ERROR_UNINITIALIZED, "UNINITIALIZED", "Uninitialized"},
    {NVML_ERROR_INVALID_ARGUMENT, "INVALID_ARGUMENT", "Invalid Argument"},
    {NVML_ERROR_NOT_SUPPORTED, "NOT_SUPPORTED", "Not Supported"},
    {NVML_ERROR_NO_PERMISSION, "NO_PERMISSION", "Insufficient Permissions"},
    {NVML_ERROR_ALREADY_INITIALIZED, "ALREADY_INITIALIZED", "Already Initialized"},
    {NVML_ERROR_NOT_FOUND, "NOT_FOUND", "Not Found"},
    {NVML_ERROR_INSUFFICIENT_SIZE, "INSUFFICIENT_SIZE", "Insufficient Size"},
    {NVML_ERROR_INSUFFICIENT_POWER, "INSUFFICIENT_POWER", "Insufficient External Power"},
    {NVML_ERROR_DRIVER_NOT_LOADED, "DRIVER_NOT_LOADED", "Driver Not Loaded"},
    {NVML_ERROR_TIMEOUT, "TIMEOUT", "Timeout"},
    {NVML_ERROR_IRQ_ISSUE, "IRQ_ISSUE", "Interrupt Request Issue"},
    {NVML_ERROR_LIBRARY_NOT_FOUND, "LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"},
    {NVML_ERROR_FUNCTION_NOT_FOUND, "FUNCTION_NOT_FOUND", "Function Not Found"},
    {NVML_ERROR_CORRUPTED_INFOROM, "CORRUPTED_INFOROM", "Corrupted infoROM"},
    {NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST", "GPU is lost"},
    {NVML_ERROR_RESET_REQUIRED, "RESET_REQUIRED", "GPU requires restart"},
    {NVML_ERROR_OPERATING_SYSTEM, "OPERATING_SYSTEM", "The operating system has blocked the request."},
    {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LIB_RM_VERSION_MISMATCH", "RM has detected an NVML/RM version mismatch."},
    {NVML_ERROR_IN_USE, "IN_USE", "In use by another client"},
    {NVML_ERROR_MEMORY, "MEMORY", "Insufficient Memory"},
    {NVML_ERROR_NO_DATA, "NO_DATA", "No data"},
    {NVML_ERROR_INSUFFICIENT_RESOURCES, "INSUFFICIENT_RESOURCES", "Insufficient resources"},
    {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "ARGUMENT_VERSION_MISMATCH", "Argument version mismatch"},
    {NVML_ERROR_DEPRECATED, "DEPRECATED", "Deprecated"},
    {NVML_ERROR_NOT_READY, "NOT_READY", "Not ready"},
    {NVML_ERROR_GPU_NOT_FOUND, "GPU_NOT_FOUND", "GPU not found"},
    {NVML_ERROR_INVALID_STATE, "INVALID_STATE", "Invalid state"},
    {NVML_ERROR_UNKNOWN, "UNKNOWN", "Unknown Error"},
};

/* HGX H100 baseboard bus numbers, so ids look like a real node's. */
static const unsigned int hgx_bus[8] = {0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb};

static unsigned int bus_of(unsigned int slot) { return slot < 8 ? hgx_bus[slot] : 0x10 + slot; }

static void uuid_of(unsigned int slot, char *out, size_t len) {
    snprintf(out, len, "GPU-5f0e6a3c-%04x-4b1d-8e2f-a1b2c3d4%04x", 0x1000 + slot, slot);
}

static void default_gpu(unsigned int slot, fake_gpu_t *g) {
    memset(g, 0, sizeof(*g));
    g->utilization_gpu = 97;
    g->utilization_memory = 42;
    g->memory_total = 85520809984ULL; /* 81559 MiB, what an H100 80GB reports */
    g->memory_used = 66035122176ULL;
    g->temperature = 48 + slot % 4;
    g->memory_temperature = 56 + slot % 3;
    g->power_mw = 550000 + 1000 * slot;
    g->power_limit_mw = 700000;
    g->sm_clock_mhz = 1980;
    g->memory_clock_mhz = 2619;
    g->pcie_generation = g->pcie_max_generation = 5;
    g->pcie_width = g->pcie_max_width = 16;
    g->pcie_tx_kb_per_s = 1200000;
    g->pcie_rx_kb_per_s = 2400000;
    for (int link = 0; link < FAKE_NVLINKS; link++) g->nvlink_active[link] = 1;
}

static void default_config(fake_config_t *c) {
    memset(c, 0, sizeof(*c));
    c->init_error = NVML_SUCCESS;
    c->gpu_count = FAKE_DEFAULT_GPUS;
    snprintf(c->driver_version, sizeof(c->driver_version), "580.95.05");
    c->time_seconds = -1;
    for (unsigned int slot = 0; slot < FAKE_MAX_GPUS; slot++) default_gpu(slot, &c->gpus[slot]);
}

/* ---- config file: parse, check, apply --------------------------------------------------------------- */

typedef struct {
    char *msg;
    size_t len;
} problem_t;

static int problem(problem_t *p, const char *where, const char *what) {
    snprintf(p->msg, p->len, "%s: %s", where, what);
    return -1;
}

static int check_keys(const fake_json_t *obj, const char *const *allowed, const char *where, problem_t *p) {
    if (obj->type != FJ_OBJECT) return problem(p, where, "must be an object");
    for (int i = 0; i < obj->count; i++) {
        int known = 0;
        for (const char *const *a = allowed; *a; a++) known |= strcmp(obj->keys[i], *a) == 0;
        if (!known) {
            char what[160];
            snprintf(what, sizeof(what), "unknown key '%s'", obj->keys[i]);
            return problem(p, where, what);
        }
    }
    return 0;
}

static int get_uint(const fake_json_t *obj, const char *key, unsigned long long *out, const char *where, problem_t *p) {
    const fake_json_t *v = fake_json_get(obj, key);
    if (!v) return 0;
    if ((v->type != FJ_NUMBER && v->type != FJ_BOOL) || v->number < 0) {
        char what[160];
        snprintf(what, sizeof(what), "'%s' must be a non-negative number", key);
        return problem(p, where, what);
    }
    *out = (unsigned long long)v->number;
    return 0;
}

#define GET_UINT(obj, key, field, where, p)                                   \
    do {                                                                      \
        unsigned long long v_ = (field);                                      \
        if (get_uint((obj), (key), &v_, (where), (p))) return -1;             \
        (field) = v_;                                                         \
    } while (0)

static int return_code_of(const fake_json_t *v, nvmlReturn_t *out) {
    if (v->type == FJ_NUMBER) { *out = (nvmlReturn_t)(int)v->number; return 0; }
    if (v->type != FJ_STRING) return -1;
    const char *name = v->string;
    if (strncmp(name, "NVML_ERROR_", 11) == 0) name += 11;
    for (size_t i = 0; i < sizeof(return_codes) / sizeof(return_codes[0]); i++)
        if (strcmp(name, return_codes[i].name) == 0) { *out = return_codes[i].code; return 0; }
    return -1;
}

static int add_error(fake_error_t *errors, int *count, const char *function, nvmlReturn_t code, const char *where,
                     problem_t *p) {
    if (*count >= FAKE_MAX_ERRORS) return problem(p, where, "too many injected errors");
    if (strlen(function) >= FAKE_FUNCTION_NAME) return problem(p, where, "function name too long");
    snprintf(errors[*count].function, FAKE_FUNCTION_NAME, "%s", function);
    errors[(*count)++].code = code;
    return 0;
}

/* "errors": {"nvmlDeviceGetPowerUsage": "UNKNOWN"} and "not_supported": ["nvmlDeviceGetPcieThroughput"] */
static int parse_errors(const fake_json_t *obj, fake_error_t *errors, int *count, const char *where, problem_t *p) {
    const fake_json_t *e = fake_json_get(obj, "errors"), *ns = fake_json_get(obj, "not_supported");
    if (e) {
        if (e->type != FJ_OBJECT) return problem(p, where, "'errors' must map function names to return codes");
        for (int i = 0; i < e->count; i++) {
            nvmlReturn_t code;
            if (return_code_of(&e->items[i], &code))
                return problem(p, where, "'errors' values must be NVML return codes such as \"GPU_IS_LOST\"");
            if (add_error(errors, count, e->keys[i], code, where, p)) return -1;
        }
    }
    if (ns) {
        if (ns->type != FJ_ARRAY) return problem(p, where, "'not_supported' must be a list of function names");
        for (int i = 0; i < ns->count; i++) {
            if (ns->items[i].type != FJ_STRING) return problem(p, where, "'not_supported' entries must be strings");
            if (add_error(errors, count, ns->items[i].string, NVML_ERROR_NOT_SUPPORTED, where, p)) return -1;
        }
    }
    return 0;
}

static int parse_gpu(const fake_json_t *obj, fake_gpu_t *g, const char *where, problem_t *p) {
    static const char *const keys[] = {
        "absent", "lost", "xid", "ecc", "remapped_rows", "retired_pages", "thermal_throttle", "power_throttle",
        "clock_event_reasons", "pcie", "nvlink_down", "nvlink_errors", "errors", "not_supported",
        "utilization_gpu_percent", "utilization_memory_percent", "memory_used_bytes", "temperature_celsius",
        "memory_temperature_celsius", "power_watts", "power_limit_watts", "sm_clock_mhz", "memory_clock_mhz", NULL};
    if (check_keys(obj, keys, where, p)) return -1;
    const fake_json_t *v;

    /* shortcuts first, so explicit values below win */
    if ((v = fake_json_get(obj, "thermal_throttle")) && v->number) {
        g->clock_event_reasons |= nvmlClocksEventReasonSwThermalSlowdown | nvmlClocksThrottleReasonHwThermalSlowdown |
                                  nvmlClocksThrottleReasonHwSlowdown;
        g->temperature = 94;
        g->memory_temperature = 99;
        g->sm_clock_mhz = 1260;
    }
    if ((v = fake_json_get(obj, "power_throttle")) && v->number) {
        g->clock_event_reasons |= nvmlClocksThrottleReasonHwPowerBrakeSlowdown | nvmlClocksThrottleReasonHwSlowdown;
        g->power_mw = 350000;
        g->sm_clock_mhz = 1095;
    }
    unsigned long long flag;
    flag = 0; GET_UINT(obj, "absent", flag, where, p); g->absent = flag != 0;
    flag = 0; GET_UINT(obj, "lost", flag, where, p); g->lost = flag != 0;
    GET_UINT(obj, "clock_event_reasons", g->clock_event_reasons, where, p);
    GET_UINT(obj, "utilization_gpu_percent", g->utilization_gpu, where, p);
    GET_UINT(obj, "utilization_memory_percent", g->utilization_memory, where, p);
    GET_UINT(obj, "memory_used_bytes", g->memory_used, where, p);
    GET_UINT(obj, "temperature_celsius", g->temperature, where, p);
    GET_UINT(obj, "memory_temperature_celsius", g->memory_temperature, where, p);
    GET_UINT(obj, "sm_clock_mhz", g->sm_clock_mhz, where, p);
    GET_UINT(obj, "memory_clock_mhz", g->memory_clock_mhz, where, p);
    unsigned long long watts = 0;
    if (fake_json_get(obj, "power_watts")) { GET_UINT(obj, "power_watts", watts, where, p); g->power_mw = (unsigned int)(watts * 1000); }
    if (fake_json_get(obj, "power_limit_watts")) { GET_UINT(obj, "power_limit_watts", watts, where, p); g->power_limit_mw = (unsigned int)(watts * 1000); }
    if (g->memory_used > g->memory_total) return problem(p, where, "'memory_used_bytes' exceeds the 80 GB total");

    if ((v = fake_json_get(obj, "xid"))) {
        if (v->type != FJ_ARRAY) return problem(p, where, "'xid' must be a list of XID codes");
        if (v->count > FAKE_MAX_XIDS) return problem(p, where, "'xid' has too many entries");
        for (int i = 0; i < v->count; i++) {
            if (v->items[i].type != FJ_NUMBER || v->items[i].number < 0) return problem(p, where, "'xid' entries must be codes");
            g->xids[i] = (unsigned int)v->items[i].number;
        }
        g->xid_count = v->count;
    }
    if ((v = fake_json_get(obj, "ecc"))) {
        static const char *const ecc_keys[] = {"volatile_corrected", "volatile_uncorrected", "aggregate_corrected",
                                               "aggregate_uncorrected", NULL};
        if (check_keys(v, ecc_keys, where, p)) return -1;
        GET_UINT(v, "volatile_corrected", g->ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED][NVML_VOLATILE_ECC], where, p);
        GET_UINT(v, "volatile_uncorrected", g->ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED][NVML_VOLATILE_ECC], where, p);
        GET_UINT(v, "aggregate_corrected", g->ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED][NVML_AGGREGATE_ECC], where, p);
        GET_UINT(v, "aggregate_uncorrected", g->ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED][NVML_AGGREGATE_ECC], where, p);
    }
    if ((v = fake_json_get(obj, "remapped_rows"))) {
        static const char *const remap_keys[] = {"correctable", "uncorrectable", "pending", "failure", NULL};
        if (check_keys(v, remap_keys, where, p)) return -1;
        GET_UINT(v, "correctable", g->remapped_correctable, where, p);
        GET_UINT(v, "uncorrectable", g->remapped_uncorrectable, where, p);
        GET_UINT(v, "pending", g->remap_pending, where, p);
        GET_UINT(v, "failure", g->remap_failure, where, p);
    }
    if ((v = fake_json_get(obj, "retired_pages"))) {
        static const char *const page_keys[] = {"single_bit_ecc", "double_bit_ecc", "pending", NULL};
        if (check_keys(v, page_keys, where, p)) return -1;
        GET_UINT(v, "single_bit_ecc", g->retired_pages[NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS], where, p);
        GET_UINT(v, "double_bit_ecc", g->retired_pages[NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR], where, p);
        flag = 0; GET_UINT(v, "pending", flag, where, p); g->retired_pages_pending = flag != 0;
    }
    if ((v = fake_json_get(obj, "pcie"))) {
        static const char *const pcie_keys[] = {"generation", "max_generation", "width", "max_width", "replay_counter",
                                                "tx_kilobytes_per_second", "rx_kilobytes_per_second", NULL};
        if (check_keys(v, pcie_keys, where, p)) return -1;
        GET_UINT(v, "generation", g->pcie_generation, where, p);
        GET_UINT(v, "max_generation", g->pcie_max_generation, where, p);
        GET_UINT(v, "width", g->pcie_width, where, p);
        GET_UINT(v, "max_width", g->pcie_max_width, where, p);
        GET_UINT(v, "replay_counter", g->pcie_replays, where, p);
        GET_UINT(v, "tx_kilobytes_per_second", g->pcie_tx_kb_per_s, where, p);
        GET_UINT(v, "rx_kilobytes_per_second", g->pcie_rx_kb_per_s, where, p);
    }
    if ((v = fake_json_get(obj, "nvlink_down"))) {
        if (v->type != FJ_ARRAY) return problem(p, where, "'nvlink_down' must be a list of link numbers");
        for (int i = 0; i < v->count; i++) {
            double link = v->items[i].number;
            if (v->items[i].type != FJ_NUMBER || link < 0 || link >= FAKE_NVLINKS)
                return problem(p, where, "'nvlink_down' entries must be links 0..17");
            g->nvlink_active[(int)link] = 0;
        }
    }
    if ((v = fake_json_get(obj, "nvlink_errors"))) {
        static const char *const counter_keys[] = {"replay", "recovery", "crc_flit", "crc_data", "ecc_data", NULL};
        if (v->type != FJ_OBJECT) return problem(p, where, "'nvlink_errors' must map link numbers to counters");
        for (int i = 0; i < v->count; i++) {
            char *end;
            long link = strtol(v->keys[i], &end, 10);
            if (*end || link < 0 || link >= FAKE_NVLINKS) return problem(p, where, "'nvlink_errors' keys must be links 0..17");
            if (check_keys(&v->items[i], counter_keys, where, p)) return -1;
            for (int c = 0; c < NVML_NVLINK_ERROR_COUNT; c++)
                GET_UINT(&v->items[i], counter_keys[c], g->nvlink_errors[link][c], where, p);
        }
    }
    return parse_errors(obj, g->errors, &g->error_count, where, p);
}

static int parse_config(const fake_json_t *doc, fake_config_t *c, problem_t *p) {
    static const char *const keys[] = {"gpu_count", "init_error", "driver_version", "time_seconds", "errors",
                                       "not_supported", "gpus", NULL};
    const fake_json_t *v;
    default_config(c);
    if (check_keys(doc, keys, "config", p)) return -1;
    unsigned long long count = FAKE_DEFAULT_GPUS;
    if (get_uint(doc, "gpu_count", &count, "config", p)) return -1;
    if (count > FAKE_MAX_GPUS) return problem(p, "config", "'gpu_count' must be 0..16");
    c->gpu_count = (int)count;
    if ((v = fake_json_get(doc, "init_error")) && return_code_of(v, &c->init_error))
        return problem(p, "config", "'init_error' must be an NVML return code such as \"DRIVER_NOT_LOADED\"");
    if ((v = fake_json_get(doc, "driver_version"))) {
        if (v->type != FJ_STRING) return problem(p, "config", "'driver_version' must be a string");
        snprintf(c->driver_version, sizeof(c->driver_version), "%s", v->string);
    }
    if ((v = fake_json_get(doc, "time_seconds"))) {
        if (v->type != FJ_NUMBER || v->number < 0) return problem(p, "config", "'time_seconds' must be >= 0");
        c->time_seconds = v->number;
    }
    if (parse_errors(doc, c->errors, &c->error_count, "config", p)) return -1;
    if ((v = fake_json_get(doc, "gpus"))) {
        if (v->type != FJ_OBJECT) return problem(p, "config", "'gpus' must map GPU slots (\"0\"..\"15\") to faults");
        for (int i = 0; i < v->count; i++) {
            char *end, where[64];
            long slot = strtol(v->keys[i], &end, 10);
            if (*end || slot < 0 || slot >= FAKE_MAX_GPUS) return problem(p, "config", "'gpus' keys must be slots 0..15");
            snprintf(where, sizeof(where), "gpus.%ld", slot);
            if (parse_gpu(&v->items[i], &c->gpus[slot], where, p)) return -1;
        }
    }
    return 0;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0, n;
    char *text = malloc(cap + 1);
    while (text && (n = fread(text + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            char *bigger = realloc(text, (cap *= 2) + 1);
            if (!bigger) { free(text); text = NULL; }
            text = bigger;
        }
    }
    fclose(f);
    if (text) text[len] = '\0';
    return text;
}

static int same_file_state(const struct stat *a, const struct stat *b) {
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Called with fake_lock held. Re-reads the config when its path or file changed; a broken file is reported on
 * stderr once per change and the previous config stays in force. */
static void reload_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    struct stat st;
    if (!path) path = "";
    int exists = path[0] && stat(path, &st) == 0;
    if (!exists) memset(&st, 0, sizeof(st));
    if (config_loaded && strcmp(path, config_path) == 0 && same_file_state(&st, &config_stat)) return;
    if (strcmp(path, config_path) != 0) memset(xids_delivered, 0, sizeof(xids_delivered)); /* a new scenario */
    snprintf(config_path, sizeof(config_path), "%s", path);
    config_stat = st;
    if (!config_loaded) {
        clock_gettime(CLOCK_MONOTONIC, &loaded_at);
        config_loaded = 1;
    }
    if (!exists) {
        if (path[0]) fprintf(stderr, "fake-nvml: %s: %s; using 8 healthy GPUs\n", path, strerror(errno));
        default_config(&config);
        return;
    }
    char *text = read_file(path), msg[256] = "";
    fake_json_t doc;
    problem_t p = {msg, sizeof(msg)};
    if (!text) {
        fprintf(stderr, "fake-nvml: %s: cannot read: %s; keeping the previous config\n", path, strerror(errno));
        return;
    }
    if (fake_json_parse(text, &doc, msg, sizeof(msg)) == 0) {
        if (parse_config(&doc, &staging, &p) == 0) {
            config = staging;
            msg[0] = '\0';
        }
        fake_json_free(&doc);
    }
    free(text);
    if (msg[0]) fprintf(stderr, "fake-nvml: %s: %s; keeping the previous config\n", path, msg);
}

/* ---- helpers shared by the API functions -------------------------------------------------------------- */

static double now_seconds(void) {
    if (config.time_seconds >= 0) return config.time_seconds;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - loaded_at.tv_sec) + (double)(t.tv_nsec - loaded_at.tv_nsec) / 1e9;
}

static nvmlReturn_t injected(const fake_error_t *errors, int count, const char *function) {
    for (int i = 0; i < count; i++)
        if (strcmp(errors[i].function, function) == 0) return errors[i].code;
    return NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t rc) {
    pthread_mutex_unlock(&fake_lock);
    return rc;
}

/* Locks, reloads the config and checks initialisation and injected errors for a call without a device. */
static nvmlReturn_t enter(const char *function) {
    pthread_mutex_lock(&fake_lock);
    reload_config();
    if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
    return injected(config.errors, config.error_count, function);
}

/* Present slots in index order: a GPU that vanished (absent) shifts the indices of those after it. */
static int slot_of_index(unsigned int index) {
    unsigned int seen = 0;
    for (int slot = 0; slot < config.gpu_count; slot++) {
        if (config.gpus[slot].absent) continue;
        if (seen++ == index) return slot;
    }
    return -1;
}

static unsigned int visible_count(void) {
    unsigned int n = 0;
    for (int slot = 0; slot < config.gpu_count; slot++) n += !config.gpus[slot].absent;
    return n;
}

static int slot_present(unsigned int slot) { return (int)slot < config.gpu_count && !config.gpus[slot].absent; }

/* As enter(), plus: the handle is one of ours, the GPU is still there and not lost. */
static nvmlReturn_t enter_device(const char *function, nvmlDevice_t device, const fake_gpu_t **gpu) {
    nvmlReturn_t rc = enter(function);
    if (rc != NVML_SUCCESS) return rc;
    if (device < &devices[0] || device >= &devices[FAKE_MAX_GPUS]) return NVML_ERROR_INVALID_ARGUMENT;
    if (!slot_present(device->slot) || config.gpus[device->slot].lost) return NVML_ERROR_GPU_IS_LOST;
    *gpu = &config.gpus[device->slot];
    return injected((*gpu)->errors, (*gpu)->error_count, function);
}

#define BEGIN(function)                                        \
    nvmlReturn_t rc_ = enter(function);                        \
    if (rc_ != NVML_SUCCESS) return leave(rc_)

#define BEGIN_DEVICE(function, device)                         \
    const fake_gpu_t *g;                                       \
    nvmlReturn_t rc_ = enter_device(function, device, &g);     \
    if (rc_ != NVML_SUCCESS) return leave(rc_)

static nvmlReturn_t copy_string(const char *value, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

/* Queue the XIDs of each GPU's log that were not delivered yet to every event set registered for them. XIDs
 * that happen while no set listens for the GPU wait for the first one that registers (a convenience of the
 * fake: a fault configured before the agent starts is still seen). */
static void deliver_xids(void) {
    for (unsigned int slot = 0; slot < FAKE_MAX_GPUS; slot++) {
        const fake_gpu_t *g = &config.gpus[slot];
        if (xids_delivered[slot] > g->xid_count) xids_delivered[slot] = g->xid_count; /* the log was shortened */
        int listeners = 0;
        for (int s = 0; s < FAKE_MAX_SETS; s++)
            listeners += event_sets[s].in_use && (event_sets[s].mask[slot] & nvmlEventTypeXidCriticalError);
        if (!listeners) continue;
        for (; xids_delivered[slot] < g->xid_count; xids_delivered[slot]++) {
            for (int s = 0; s < FAKE_MAX_SETS; s++) {
                struct nvmlEventSet_st *set = &event_sets[s];
                if (!set->in_use || !(set->mask[slot] & nvmlEventTypeXidCriticalError)) continue;
                unsigned int next = (set->tail + 1) % FAKE_QUEUE;
                if (next == set->head) continue; /* full: the event is lost, as with a slow real reader */
                nvmlEventData_t *e = &set->queue[set->tail];
                e->device = &devices[slot];
                e->eventType = nvmlEventTypeXidCriticalError;
                e->eventData = g->xids[xids_delivered[slot]];
                e->gpuInstanceId = 0xFFFFFFFFu;
                e->computeInstanceId = 0xFFFFFFFFu;
                set->tail = next;
            }
        }
    }
}

static __attribute__((constructor)) void fake_nvml_load(void) {
    for (unsigned int slot = 0; slot < FAKE_MAX_GPUS; slot++) devices[slot].slot = slot;
    default_config(&config);
}

/* ---- the NVML API ------------------------------------------------------------------------------------- */

const char *nvmlErrorString(nvmlReturn_t result) {
    for (size_t i = 0; i < sizeof(return_codes) / sizeof(return_codes[0]); i++)
        if (return_codes[i].code == result) return return_codes[i].text;
    return "Unknown Error";
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&fake_lock);
    reload_config();
    if (config.init_error != NVML_SUCCESS) return leave(config.init_error);
    init_count++;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    BEGIN("nvmlShutdown");
    if (--init_count == 0) memset(event_sets, 0, sizeof(event_sets));
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    BEGIN("nvmlSystemGetDriverVersion");
    return leave(copy_string(config.driver_version, version, length));
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    BEGIN("nvmlDeviceGetCount_v2");
    if (!deviceCount) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = visible_count();
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    BEGIN("nvmlDeviceGetHandleByIndex_v2");
    int slot = slot_of_index(index);
    if (slot < 0 || !device) return leave(NVML_ERROR_INVALID_ARGUMENT);
    const fake_gpu_t *g = &config.gpus[slot];
    if (g->lost) return leave(NVML_ERROR_GPU_IS_LOST); /* as nvidia-smi shows: no handle for a lost GPU */
    nvmlReturn_t rc = injected(g->errors, g->error_count, "nvmlDeviceGetHandleByIndex_v2");
    if (rc != NVML_SUCCESS) return leave(rc);
    *device = &devices[slot];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    BEGIN_DEVICE("nvmlDeviceGetIndex", device);
    (void)g;
    if (!index) return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = 0;
    for (unsigned int slot = 0; slot < device->slot; slot++) n += slot_present(slot);
    *index = n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    BEGIN_DEVICE("nvmlDeviceGetName", device);
    (void)g;
    return leave(copy_string("NVIDIA H100 80GB HBM3", name, length));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    BEGIN_DEVICE("nvmlDeviceGetUUID", device);
    (void)g;
    char text[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    uuid_of(device->slot, text, sizeof(text));
    return leave(copy_string(text, uuid, length));
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    BEGIN_DEVICE("nvmlDeviceGetPciInfo_v3", device);
    (void)g;
    if (!pci) return leave(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    pci->domain = 0;
    pci->bus = bus_of(device->slot);
    pci->device = 0;
    pci->pciDeviceId = 0x233010DE;    /* device 0x2330 (H100 SXM5 80GB), vendor 0x10DE */
    pci->pciSubSystemId = 0x16C110DE;
    snprintf(pci->busId, sizeof(pci->busId), NVML_DEVICE_PCI_BUS_ID_FMT, pci->domain, pci->bus, pci->device);
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT, pci->domain, pci->bus,
             pci->device);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    BEGIN_DEVICE("nvmlDeviceGetMemoryInfo", device);
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    memory->total = g->memory_total;
    memory->used = g->memory_used;
    memory->free = g->memory_total - g->memory_used;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    BEGIN_DEVICE("nvmlDeviceGetMemoryInfo_v2", device);
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != nvmlMemory_v2) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    memory->total = g->memory_total;
    memory->reserved = 512ULL << 20;
    memory->used = g->memory_used - memory->reserved;
    memory->free = g->memory_total - g->memory_used;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    BEGIN_DEVICE("nvmlDeviceGetUtilizationRates", device);
    if (!utilization) return leave(NVML_ERROR_INVALID_ARGUMENT);
    utilization->gpu = g->utilization_gpu;
    utilization->memory = g->utilization_memory;
    return leave(NVML_SUCCESS);
}

static nvmlReturn_t temperature_of(const fake_gpu_t *g, nvmlTemperatureSensors_t sensor, unsigned int *out) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (sensor == NVML_TEMPERATURE_GPU) *out = g->temperature;
    else if (sensor == NVML_TEMPERATURE_GPU_MAX) *out = g->temperature + 3;
    else return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType, unsigned int *temp) {
    BEGIN_DEVICE("nvmlDeviceGetTemperature", device);
    return leave(temperature_of(g, sensorType, temp));
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature) {
    BEGIN_DEVICE("nvmlDeviceGetTemperatureV", device);
    if (!temperature) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (temperature->version != nvmlTemperature_v1) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    unsigned int value = 0;
    nvmlReturn_t rc = temperature_of(g, temperature->sensorType, &value);
    temperature->temperature = (int)value;
    return leave(rc);
}

static unsigned long long energy_mj(const fake_gpu_t *g, unsigned int slot) {
    /* mJ since "driver load": a fixed history plus the current draw over the time since the library loaded */
    return 3600000000ULL + 1000000ULL * slot + (unsigned long long)(g->power_mw * now_seconds());
}

/* nvmlNvLinkErrorCounter_t of an NVLink error-counter field (link in scopeId), or -1. */
static int nvlink_counter_of_field(unsigned int field) {
    switch (field) {
    case NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY: return NVML_NVLINK_ERROR_DL_REPLAY;
    case NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY: return NVML_NVLINK_ERROR_DL_RECOVERY;
    default: return -1;
    }
}

/* One field of nvmlDeviceGetFieldValues, from the same state as the function named in *function, whose injected
 * errors (not_supported, errors) the field answers with, as the driver would fail both the same way. */
static nvmlReturn_t field_value(const fake_gpu_t *g, unsigned int slot, nvmlFieldValue_t *f, const char **function) {
    unsigned int link = f->scopeId;
    int counter = nvlink_counter_of_field(f->fieldId);
    f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (counter >= 0 || f->fieldId == NVML_FI_DEV_NVLINK_GET_STATE) {
        *function = counter >= 0 ? "nvmlDeviceGetNvLinkErrorCounter" : "nvmlDeviceGetNvLinkState";
        if (link >= FAKE_NVLINKS) return NVML_ERROR_INVALID_ARGUMENT;
        if (counter < 0) {
            f->value.uiVal = g->nvlink_active[link] ? NVML_NVLINK_STATE_ACTIVE : NVML_NVLINK_STATE_INACTIVE;
        } else {
            f->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            f->value.ullVal = g->nvlink_errors[link][counter];
        }
        return NVML_SUCCESS;
    }
    f->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
    switch (f->fieldId) {
    case NVML_FI_DEV_MEMORY_TEMP:
        *function = "nvmlDeviceGetFieldValues";
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        f->value.uiVal = g->memory_temperature;
        return NVML_SUCCESS;
    case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
        *function = "nvmlDeviceGetTotalEnergyConsumption";
        f->value.ullVal = energy_mj(g, slot);
        return NVML_SUCCESS;
    case NVML_FI_DEV_POWER_CURRENT_LIMIT:
        *function = "nvmlDeviceGetEnforcedPowerLimit";
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        f->value.uiVal = g->power_limit_mw;
        return NVML_SUCCESS;
    case NVML_FI_DEV_ECC_SBE_VOL_TOTAL:
    case NVML_FI_DEV_ECC_DBE_VOL_TOTAL:
    case NVML_FI_DEV_ECC_SBE_AGG_TOTAL:
    case NVML_FI_DEV_ECC_DBE_AGG_TOTAL: {
        unsigned int i = f->fieldId - NVML_FI_DEV_ECC_SBE_VOL_TOTAL; /* SBE VOL, DBE VOL, SBE AGG, DBE AGG */
        *function = "nvmlDeviceGetTotalEccErrors";
        f->value.ullVal = g->ecc[i % 2 ? NVML_MEMORY_ERROR_TYPE_UNCORRECTED : NVML_MEMORY_ERROR_TYPE_CORRECTED]
                                [i / 2 ? NVML_AGGREGATE_ECC : NVML_VOLATILE_ECC];
        return NVML_SUCCESS;
    }
    case NVML_FI_DEV_RETIRED_SBE:
    case NVML_FI_DEV_RETIRED_DBE:
        *function = "nvmlDeviceGetRetiredPages";
        f->value.ullVal = g->retired_pages[f->fieldId == NVML_FI_DEV_RETIRED_SBE
                                               ? NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                                               : NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR];
        return NVML_SUCCESS;
    case NVML_FI_DEV_RETIRED_PENDING:
        *function = "nvmlDeviceGetRetiredPagesPendingStatus";
        f->value.ullVal = g->retired_pages_pending != 0;
        return NVML_SUCCESS;
    case NVML_FI_DEV_REMAPPED_COR:
    case NVML_FI_DEV_REMAPPED_UNC:
    case NVML_FI_DEV_REMAPPED_PENDING:
    case NVML_FI_DEV_REMAPPED_FAILURE: {
        const unsigned int rows[] = {g->remapped_correctable, g->remapped_uncorrectable, g->remap_pending,
                                     g->remap_failure};
        *function = "nvmlDeviceGetRemappedRows";
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        f->value.uiVal = rows[f->fieldId - NVML_FI_DEV_REMAPPED_COR];
        return NVML_SUCCESS;
    }
    case NVML_FI_DEV_PCIE_REPLAY_COUNTER:
        *function = "nvmlDeviceGetPcieReplayCounter";
        f->value.ullVal = g->pcie_replays;
        return NVML_SUCCESS;
    default:
        *function = "nvmlDeviceGetFieldValues";
        return NVML_ERROR_NOT_SUPPORTED;
    }
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    BEGIN_DEVICE("nvmlDeviceGetFieldValues", device);
    if (!values || valuesCount < 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *f = &values[i];
        const char *function;
        f->timestamp = (long long)t.tv_sec * 1000000 + t.tv_nsec / 1000;
        f->latencyUsec = 0;
        f->nvmlReturn = field_value(g, device->slot, f, &function);
        nvmlReturn_t injected_rc = injected(config.errors, config.error_count, function);
        if (injected_rc == NVML_SUCCESS) injected_rc = injected(g->errors, g->error_count, function);
        if (f->nvmlReturn == NVML_SUCCESS) f->nvmlReturn = injected_rc;
    }
    return leave(NVML_SUCCESS);
}

/* Functions that return one value of the GPU's config through a pointer. */
#define GETTER(function, type, field)                                        \
    nvmlReturn_t function(nvmlDevice_t device, type *value) {                \
        BEGIN_DEVICE(#function, device);                                     \
        if (!value) return leave(NVML_ERROR_INVALID_ARGUMENT);               \
        *value = g->field;                                                   \
        return leave(NVML_SUCCESS);                                          \
    }

GETTER(nvmlDeviceGetPowerUsage, unsigned int, power_mw)
GETTER(nvmlDeviceGetEnforcedPowerLimit, unsigned int, power_limit_mw)
GETTER(nvmlDeviceGetPowerManagementLimit, unsigned int, power_limit_mw)
GETTER(nvmlDeviceGetCurrentClocksEventReasons, unsigned long long, clock_event_reasons)
GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, unsigned long long, clock_event_reasons)
GETTER(nvmlDeviceGetCurrPcieLinkGeneration, unsigned int, pcie_generation)
GETTER(nvmlDeviceGetMaxPcieLinkGeneration, unsigned int, pcie_max_generation)
GETTER(nvmlDeviceGetGpuMaxPcieLinkGeneration, unsigned int, pcie_max_generation)
GETTER(nvmlDeviceGetCurrPcieLinkWidth, unsigned int, pcie_width)
GETTER(nvmlDeviceGetMaxPcieLinkWidth, unsigned int, pcie_max_width)
GETTER(nvmlDeviceGetPcieReplayCounter, unsigned int, pcie_replays)

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    BEGIN_DEVICE("nvmlDeviceGetTotalEnergyConsumption", device);
    if (!energy) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *energy = energy_mj(g, device->slot);
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock) {
    BEGIN_DEVICE("nvmlDeviceGetClockInfo", device);
    if (!clock) return leave(NVML_ERROR_INVALID_ARGUMENT);
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM: *clock = g->sm_clock_mhz; break;
    case NVML_CLOCK_MEM: *clock = g->memory_clock_mhz; break;
    case NVML_CLOCK_VIDEO: *clock = 1755; break;
    default: return leave(NVML_ERROR_INVALID_ARGUMENT);
    }
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current, nvmlEnableState_t *pending) {
    BEGIN_DEVICE("nvmlDeviceGetEccMode", device);
    (void)g;
    if (!current || !pending) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *current = *pending = NVML_FEATURE_ENABLED;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                         nvmlEccCounterType_t counterType, unsigned long long *eccCounts) {
    BEGIN_DEVICE("nvmlDeviceGetTotalEccErrors", device);
    if (!eccCounts || (unsigned)errorType >= NVML_MEMORY_ERROR_TYPE_COUNT ||
        (unsigned)counterType >= NVML_ECC_COUNTER_TYPE_COUNT)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *eccCounts = g->ecc[errorType][counterType];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, nvmlPageRetirementCause_t cause, unsigned int *pageCount,
                                       unsigned long long *addresses) {
    BEGIN_DEVICE("nvmlDeviceGetRetiredPages", device);
    if (!pageCount || (unsigned)cause >= NVML_PAGE_RETIREMENT_CAUSE_COUNT) return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = g->retired_pages[cause];
    if (*pageCount < n) {
        *pageCount = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (n > 0 && !addresses) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (unsigned int i = 0; i < n; i++) addresses[i] = 0x1000000ULL * (cause + 1) + 0x1000ULL * i;
    *pageCount = n;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, nvmlEnableState_t *isPending) {
    BEGIN_DEVICE("nvmlDeviceGetRetiredPagesPendingStatus", device);
    if (!isPending) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *isPending = g->retired_pages_pending ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
                                       unsigned int *isPending, unsigned int *failureOccurred) {
    BEGIN_DEVICE("nvmlDeviceGetRemappedRows", device);
    if (!corrRows || !uncRows || !isPending || !failureOccurred) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *corrRows = g->remapped_correctable;
    *uncRows = g->remapped_uncorrectable;
    *isPending = g->remap_pending;
    *failureOccurred = g->remap_failure;
    return leave(NVML_SUCCESS);
}


nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, nvmlPcieUtilCounter_t counter, unsigned int *value) {
    BEGIN_DEVICE("nvmlDeviceGetPcieThroughput", device);
    if (!value) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (counter == NVML_PCIE_UTIL_TX_BYTES) *value = g->pcie_tx_kb_per_s;
    else if (counter == NVML_PCIE_UTIL_RX_BYTES) *value = g->pcie_rx_kb_per_s;
    else return leave(NVML_ERROR_INVALID_ARGUMENT);
    leave(NVML_SUCCESS);
    /* the real call counts bytes over a 20 ms interval before it returns; so does this one (unlocked) */
    struct timespec interval = {0, 20 * 1000 * 1000};
    nanosleep(&interval, NULL);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, nvmlEnableState_t *isActive) {
    BEGIN_DEVICE("nvmlDeviceGetNvLinkState", device);
    if (!isActive || link >= FAKE_NVLINKS) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *isActive = g->nvlink_active[link] ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t device, unsigned int link, nvmlNvLinkErrorCounter_t counter,
                                             unsigned long long *counterValue) {
    BEGIN_DEVICE("nvmlDeviceGetNvLinkErrorCounter", device);
    if (!counterValue || link >= FAKE_NVLINKS || (unsigned)counter >= NVML_NVLINK_ERROR_COUNT)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    *counterValue = g->nvlink_errors[link][counter];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes) {
    BEGIN_DEVICE("nvmlDeviceGetSupportedEventTypes", device);
    (void)g;
    if (!eventTypes) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *eventTypes = FAKE_SUPPORTED_EVENTS;
    return leave(NVML_SUCCESS);
}

static struct nvmlEventSet_st *valid_set(nvmlEventSet_t set) {
    if (set < &event_sets[0] || set >= &event_sets[FAKE_MAX_SETS] || !set->in_use) return NULL;
    return set;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    BEGIN("nvmlEventSetCreate");
    if (!set) return leave(NVML_ERROR_INVALID_ARGUMENT);
    for (int s = 0; s < FAKE_MAX_SETS; s++) {
        if (event_sets[s].in_use) continue;
        memset(&event_sets[s], 0, sizeof(event_sets[s]));
        event_sets[s].in_use = 1;
        *set = &event_sets[s];
        return leave(NVML_SUCCESS);
    }
    return leave(NVML_ERROR_MEMORY);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set) {
    BEGIN_DEVICE("nvmlDeviceRegisterEvents", device);
    (void)g;
    struct nvmlEventSet_st *s = valid_set(set);
    if (!s) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (eventTypes & ~(unsigned long long)FAKE_SUPPORTED_EVENTS) return leave(NVML_ERROR_NOT_SUPPORTED);
    s->mask[device->slot] |= eventTypes;
    deliver_xids();
    return leave(NVML_SUCCESS);
}

/* One look at the set: its next event, GPU_IS_LOST when none is pending and a registered GPU is gone, or
 * NVML_ERROR_TIMEOUT for "nothing yet". */
static nvmlReturn_t next_event(nvmlEventSet_t set, nvmlEventData_t *data) {
    BEGIN("nvmlEventSetWait_v2");
    struct nvmlEventSet_st *s = valid_set(set);
    if (!s || !data) return leave(NVML_ERROR_INVALID_ARGUMENT);
    deliver_xids();
    if (s->head != s->tail) {
        *data = s->queue[s->head];
        s->head = (s->head + 1) % FAKE_QUEUE;
        return leave(NVML_SUCCESS);
    }
    for (unsigned int slot = 0; slot < FAKE_MAX_GPUS; slot++)
        if (s->mask[slot] && (!slot_present(slot) || config.gpus[slot].lost)) return leave(NVML_ERROR_GPU_IS_LOST);
    return leave(NVML_ERROR_TIMEOUT);
}

#define FAKE_POLL_MS 20 /* how often a wait re-reads the config when it cannot watch it */

/* An inotify descriptor watching the config file's directory for changes to the file (written in place, renamed
 * over, created, deleted), with the file's name in *name; -1 when inotify or the directory is unavailable. */
static int watch_config(const char *path, const char **name) {
    char dir[sizeof(config_path)];
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    if (!**name || strlen(path) >= sizeof(dir)) return -1;
    if (!slash) snprintf(dir, sizeof(dir), ".");
    else if (slash == path) snprintf(dir, sizeof(dir), "/");
    else snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return -1;
    uint32_t mask = IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                    IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
    if (inotify_add_watch(fd, dir, mask) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Block until the watched config changes (1), the directory stops being watchable (-1) or timeout_ms pass (0). */
static int wait_for_change(int fd, const char *name, int timeout_ms) {
    struct pollfd p = {fd, POLLIN, 0};
    int ready = poll(&p, 1, timeout_ms);
    if (ready <= 0) return ready < 0 && errno != EINTR ? -1 : 0;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int changed = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (char *at = buf; at < buf + n; at += sizeof(struct inotify_event) + ((struct inotify_event *)at)->len) {
            const struct inotify_event *e = (const struct inotify_event *)at;
            if (e->mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) return -1;
            if (e->mask & IN_Q_OVERFLOW || (e->len && strcmp(e->name, name) == 0)) changed = 1;
        }
    }
    return changed;
}

static int remaining_ms(const struct timespec *start, unsigned int timeout_ms) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long waited = (long long)(now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
    return waited >= timeout_ms ? 0 : (int)((long long)timeout_ms - waited);
}

/* Real NVML blocks in the driver until an event comes. XIDs come from the config here, so the fake blocks on an
 * inotify watch of the config file and looks again only when the file changed: no wakeups while nothing happens.
 * Without inotify it re-reads the config every FAKE_POLL_MS; without a config (no XIDs can come) it sleeps out
 * the timeout. A wait started before FAKE_NVML_CONFIG names a new file, or before another thread registers
 * GPUs on the set, sees that at the next wait. */
nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const char *path = getenv("FAKE_NVML_CONFIG"), *name = "";
    int watched = path && path[0], fd = watched ? watch_config(path, &name) : -1; /* before the first look */
    nvmlReturn_t rc;
    int left;
    while ((rc = next_event(set, data)) == NVML_ERROR_TIMEOUT && (left = remaining_ms(&start, timeoutms)) > 0) {
        if (fd >= 0 && wait_for_change(fd, name, left) >= 0) continue;
        if (fd >= 0) {
            close(fd);
            fd = -1;
        }
        int nap_ms = watched && left > FAKE_POLL_MS ? FAKE_POLL_MS : left;
        struct timespec nap = {nap_ms / 1000, (long)(nap_ms % 1000) * 1000000};
        nanosleep(&nap, NULL);
    }
    if (fd >= 0) close(fd);
    return rc;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    BEGIN("nvmlEventSetFree");
    struct nvmlEventSet_st *s = valid_set(set);
    if (!s) return leave(NVML_ERROR_INVALID_ARGUMENT);
    s->in_use = 0;
    return leave(NVML_SUCCESS);
}
