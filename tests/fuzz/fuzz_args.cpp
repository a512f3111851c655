// fuzz_args.cpp: the command-line parser of the tools (cli/common_args.c: stx_cli_parse and
// stx_cli_parse_device) on arbitrary argument vectors, with a table of every option type.
//
// Input: the arguments separated by NUL bytes (at most 32; argv[0] is "sparsetx-fuzz").
// Checked: the result is CONTINUE, 0 (help) or 2 (usage error); after CONTINUE the positional
// arguments are argv entries, each option's `seen` matches a given option, numbers are in
// range and choices are valid indices. The parser's messages go to a sink (quiet_args.c).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
#include "common_args.h"
}
#include <sparsetx.h>

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // argv: the input split at NUL bytes, each piece NUL-terminated in a private copy.
    std::vector<char> text(data, data + size);
    text.push_back('\0');
    static char prog[] = "sparsetx-fuzz";
    std::vector<char *> argv = {prog};
    for (size_t i = 0; i < size && argv.size() < 33;) {
        argv.push_back(&text[i]);
        i += std::strlen(&text[i]) + 1;
    }
    const int argc = static_cast<int>(argv.size());
    argv.push_back(nullptr);

    const int kUnset = -12345;
    int steps = kUnset, choice = kUnset, flag = 0, quiet = 0;
    int64_t offset = -1;
    uint64_t seed = 7;
    double lr = -2.5;
    const char *out = nullptr, *device = nullptr;
    stx_cli_opt opts[] = {
        STX_OPT("steps", 'n', STX_OPT_INT, &steps, "100", "optimizer steps"),
        STX_OPT("offset", 0, STX_OPT_INT64, &offset, "0", "data offset"),
        STX_OPT("seed", 's', STX_OPT_UINT64, &seed, "1", "random seed"),
        STX_OPT("lr", 0, STX_OPT_DOUBLE, &lr, "3e-4", "peak learning rate"),
        STX_OPT_META("output", 'o', STX_OPT_STRING, &out, "FILE", "none", "checkpoint"),
        STX_OPT_META("device", 'd', STX_OPT_STRING, &device, "DEV", "auto", "cpu, cuda[:N], auto"),
        STX_OPT_CHOICE("precision", 'p', &choice, "fp32|fp64|bf16", "fp32", "precision"),
        STX_OPT("verbose", 'v', STX_OPT_FLAG, &flag, nullptr, "print more"),
        STX_OPT("quiet", 0, STX_OPT_FLAG, &quiet, nullptr, "print less"),
        STX_OPT_END};
    stx_cli cli = {"sparsetx-fuzz", "DATAFILE [OUT] [options]", "Fuzz the option parser.", opts};
    const char *pos[2] = {nullptr, nullptr};
    int n_pos = -1;
    const int rc = stx_cli_parse(&cli, argc, argv.data(), pos, 2, &n_pos);
    FUZZ_CHECK(rc == STX_CLI_CONTINUE || rc == 0 || rc == 2);
    FUZZ_CHECK(n_pos >= 0 && n_pos <= 2);
    for (int i = 0; i < n_pos; ++i) {
        bool from_argv = false;
        for (int a = 1; a < argc; ++a) from_argv = from_argv || pos[i] == argv[a];
        FUZZ_CHECK(from_argv);
    }
    if (rc == STX_CLI_CONTINUE) {
        FUZZ_CHECK(opts[0].seen || steps == kUnset);
        FUZZ_CHECK(std::isfinite(lr));
        FUZZ_CHECK(choice == kUnset || (choice >= 0 && choice <= 2));
        FUZZ_CHECK(flag == 0 || flag == 1);
        FUZZ_CHECK(stx_cli_find(&cli, "seed") == &opts[2]);
        FUZZ_CHECK(stx_cli_find(&cli, "nope") == nullptr);
        for (const char *s : {out, device}) {
            if (!s) continue;
            bool from_argv = false;
            for (int a = 1; a < argc; ++a)
                from_argv = from_argv || (s >= argv[a] && s <= argv[a] + std::strlen(argv[a]));
            FUZZ_CHECK(from_argv);
        }
        if (device) {
            int32_t backend = -1, dev = -1;
            if (stx_cli_parse_device(device, &backend, &dev) == 0)
                FUZZ_CHECK(backend >= STX_BACKEND_CPU && backend <= STX_BACKEND_AUTO && dev >= 0 &&
                           dev <= 1023);
        }
    }
    // A second parse of the same argv gives the same answer (the parser keeps no state).
    const int rc2 = stx_cli_parse(&cli, argc, argv.data(), pos, 2, &n_pos);
    FUZZ_CHECK(rc2 == rc);
    return 0;
}
