// dist.cpp: the data-parallel C API (stx_dist_*, stx_shard_batch, stx_model_set_dist and the
// weight checksum), the CPU transport (a world of one rank) and its gradient all-reduce, and the
// refusals of a build without NCCL. cuda/dist.cu holds the NCCL transport.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "config.h"
#include "dist.h"
#include "error.h"
#include "handles.h"
#include "model_handle.h"

struct stx_dist {
    std::shared_ptr<stx::Transport> transport;
};

namespace stx {
namespace {

constexpr double kDefaultTimeoutS = 300.0;

// The CPU world of one rank: the reduction over one rank is the identity.
class CpuTransport final : public Transport {
public:
    int32_t rank() const override { return 0; }
    int32_t world() const override { return 1; }
    int32_t device() const override { return STX_DIST_CPU; }
    stx_status allreduce_host(double *, int32_t, stx_reduce_op, const char *) override {
        return STX_OK;
    }
    stx_status make_grad_sync(int32_t precision, int64_t total, const DistGradOptions &o,
                              std::shared_ptr<Transport> self,
                              std::unique_ptr<GradSync> *out) override;
    bool broken() const override { return false; }
};

// The CPU gradient all-reduce: each range is staged (rounded to bf16 when asked, as the NCCL
// path sends it), reduced (the identity over one rank) and scaled by 1/world, in place.
template <typename S> class CpuGradSync final : public GradSync {
public:
    CpuGradSync(std::shared_ptr<Transport> t, const DistGradOptions &o) : t_(std::move(t)), o_(o) {}
    void ready(void *grads, int64_t offset, int64_t count, void *) override {
        S *g = static_cast<S *>(grads) + offset;
        const S inv_world = static_cast<S>(1.0 / static_cast<double>(t_->world()));
        for (int64_t i = 0; i < count; ++i) {
            S v = g[i];
            if (o_.bf16) v = static_cast<S>(round_to_bf16(static_cast<float>(v)));
            g[i] = t_->world() == 1 ? v : v * inv_world; // x * 1 is x: skip it for one rank
        }
    }
    stx_status finish(void *) override { return STX_OK; }
    int32_t bucket_layers() const override { return o_.bucket_layers; }

private:
    std::shared_ptr<Transport> t_;
    DistGradOptions o_;
};

stx_status CpuTransport::make_grad_sync(int32_t precision, int64_t, const DistGradOptions &o,
                                        std::shared_ptr<Transport> self,
                                        std::unique_ptr<GradSync> *out) {
    if (precision == STX_PRECISION_FP64)
        out->reset(new CpuGradSync<double>(std::move(self), o));
    else
        out->reset(new CpuGradSync<float>(std::move(self), o));
    return STX_OK;
}

stx_status check_rank(const char *fn, int32_t world, int32_t rank) {
    if (world < 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: the world size (%d) must be at least 1", fn,
                    world);
    if (rank < 0 || rank >= world)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: rank (%d) must be in [0, %d) (world size %d)",
                    fn, rank, world, world);
    return STX_OK;
}

stx_status check_dist(const stx_dist *dist, const char *fn) {
    if (!dist) return fail(STX_ERR_INVALID_ARGUMENT, "%s: dist is NULL", fn);
    if (!handle_live(dist))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: dist is not a live communicator (freed?)", fn);
    if (dist->transport->broken())
        return fail(STX_ERR_COMM,
                    "%s: the communicator was aborted after an earlier failure (a peer failed or "
                    "timed out); free it",
                    fn);
    return STX_OK;
}

} // namespace

stx_status create_cpu_transport(std::unique_ptr<Transport> *out) {
    out->reset(new CpuTransport());
    return STX_OK;
}

#ifndef STX_HAVE_NCCL
bool nccl_built() {
    return false;
}
stx_status nccl_unique_id(uint8_t *) {
    return fail(STX_ERR_UNSUPPORTED,
                "stx_dist_unique_id: built without NCCL (data parallel on GPUs needs a build "
                "that found NCCL: the CUDA toolkit's or NCCL_ROOT)");
}
stx_status create_nccl_transport(int32_t, int32_t, const uint8_t *, int32_t, double,
                                 std::unique_ptr<Transport> *) {
    return fail(STX_ERR_UNSUPPORTED,
                "stx_dist_create: built without NCCL: a CUDA communicator needs a build that "
                "found NCCL (the CUDA toolkit's or NCCL_ROOT)");
}
#endif

} // namespace stx

using stx::fail;

extern "C" {

STX_API stx_status stx_shard_batch(int32_t global_batch, int32_t world, int32_t rank,
                                   int32_t *first, int32_t *count) {
    const char *fn = "stx_shard_batch";
    if (!first || !count)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !first ? "first" : "count");
    if (stx_status s = stx::check_rank(fn, world, rank)) return s;
    if (global_batch < 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: the global batch (%d) must be at least 1", fn,
                    global_batch);
    if (global_batch % world != 0)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: the global batch (%d) must be divisible by the world size (%d): every "
                    "rank trains on the same number of sequences (use a batch of %d or %d)",
                    fn, global_batch, world,
                    global_batch / world * world > 0 ? global_batch / world * world : world,
                    (global_batch / world + 1) * world);
    *count = global_batch / world;
    *first = rank * *count;
    return STX_OK;
}

STX_API stx_status stx_dist_unique_id(stx_dist_id *id) {
    if (!id) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dist_unique_id: id is NULL");
    return stx::guarded("stx_dist_unique_id", [&] { return stx::nccl_unique_id(id->bytes); });
}

STX_API stx_status stx_dist_create(int32_t rank, int32_t world, const stx_dist_id *id,
                                   int32_t device, double timeout_s, stx_dist **out) {
    const char *fn = "stx_dist_create";
    if (!out) return fail(STX_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = nullptr;
    if (stx_status s = stx::check_rank(fn, world, rank)) return s;
    if (!(timeout_s >= 0.0 && std::isfinite(timeout_s)))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: timeout_s (%g) must be a finite number of seconds >= 0 (0: %g)", fn,
                    timeout_s, stx::kDefaultTimeoutS);
    if (timeout_s == 0.0) timeout_s = stx::kDefaultTimeoutS;
    if (device < STX_DIST_CPU)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: device (%d) must be a CUDA device index or STX_DIST_CPU (-1)", fn, device);
    if (!id && world > 1)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: id is NULL but the world has %d ranks: every rank needs rank 0's "
                    "stx_dist_unique_id",
                    fn, world);
    return stx::guarded(fn, [&] {
        std::unique_ptr<stx::Transport> t;
        stx_status s = STX_OK;
        if (device == STX_DIST_CPU) {
            if (world > 1)
                return fail(STX_ERR_UNSUPPORTED,
                            "%s: a CPU communicator has one rank only (world size %d asked): "
                            "data parallel over several processes needs CUDA devices and NCCL",
                            fn, world);
            s = stx::create_cpu_transport(&t);
        } else {
            if (!(stx_build_features() & STX_FEATURE_CUDA))
                return fail(STX_ERR_UNSUPPORTED,
                            "%s: device %d: this build has no CUDA backend (use STX_DIST_CPU)", fn,
                            device);
            if (!stx::nccl_built())
                return stx::create_nccl_transport(rank, world, nullptr, device, timeout_s, &t);
            if (device >= stx::cuda_device_count())
                return fail(STX_ERR_INVALID_ARGUMENT,
                            "%s: device %d is not there (%d CUDA devices visible)", fn, device,
                            stx::cuda_device_count());
            stx_dist_id local;
            if (!id) { // world 1: no peer needs to know the id
                if ((s = stx::nccl_unique_id(local.bytes)) != STX_OK) return s;
                id = &local;
            }
            s = stx::create_nccl_transport(rank, world, id->bytes, device, timeout_s, &t);
        }
        if (s != STX_OK) return s;
        stx_dist *d = new stx_dist;
        d->transport = std::move(t);
        stx::handle_register(d);
        *out = d;
        return STX_OK;
    });
}

STX_API void stx_dist_free(stx_dist *dist) {
    if (dist && stx::handle_unregister(dist)) delete dist;
}

STX_API stx_status stx_dist_info(const stx_dist *dist, int32_t *rank, int32_t *world,
                                 int32_t *device) {
    if (!dist) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dist_info: dist is NULL");
    if (!stx::handle_live(dist))
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "stx_dist_info: dist is not a live communicator (freed?)");
    if (rank) *rank = dist->transport->rank();
    if (world) *world = dist->transport->world();
    if (device) *device = dist->transport->device();
    return STX_OK;
}

STX_API stx_status stx_dist_allreduce(stx_dist *dist, double *values, int32_t count,
                                      stx_reduce_op op) {
    const char *fn = "stx_dist_allreduce";
    stx_status st = stx::check_dist(dist, fn);
    if (st != STX_OK) return st;
    if (count < 0 || (count > 0 && !values))
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: %s", fn,
                    count < 0 ? "count is negative" : "values is NULL");
    const int32_t o = static_cast<int32_t>(op);
    if (o < STX_REDUCE_SUM || o > STX_REDUCE_MAX)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: op (%d) is not an stx_reduce_op (0 sum, 1 min, 2 max)", fn, o);
    if (count == 0) return STX_OK;
    return stx::guarded(fn, [&] { return dist->transport->allreduce_host(values, count, op, fn); });
}

STX_API stx_status stx_dist_options_init_v(stx_dist_options *opt, size_t opt_size,
                                           int32_t abi_version) {
    if (!opt) return fail(STX_ERR_INVALID_ARGUMENT, "stx_dist_options_init: opt is NULL");
    stx_status st =
        stx::check_abi("stx_dist_options_init", opt_size, sizeof(stx_dist_options), abi_version);
    if (st != STX_OK) return st;
    opt->grads = STX_DIST_GRADS_FP32;
    opt->bucket_layers = 2;
    return STX_OK;
}

STX_API stx_status stx_model_set_dist_v(stx_model *model, stx_dist *dist,
                                        const stx_dist_options *opt, size_t opt_size,
                                        int32_t abi_version) {
    const char *fn = "stx_model_set_dist";
    stx_status st = stx::check_model(model, fn);
    if (st != STX_OK) return st;
    if (!dist) { // alone again
        model->backend->set_grad_sync(nullptr);
        model->grad_sync.reset();
        model->dist.reset();
        model->grads_reduced = model->grads_local = false;
        return STX_OK;
    }
    if ((st = stx::check_dist(dist, fn)) != STX_OK) return st;
    stx_dist_options o;
    stx_dist_options_init(&o);
    if (opt) {
        if ((st = stx::check_abi(fn, opt_size, sizeof(stx_dist_options), abi_version)) != STX_OK)
            return st;
        o = *opt;
    }
    if (o.grads != STX_DIST_GRADS_FP32 && o.grads != STX_DIST_GRADS_BF16)
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: grads (%d) is not an stx_dist_grads (0 fp32, 1 bf16)", fn, o.grads);
    if (o.bucket_layers < 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "%s: bucket_layers (%d) must be at least 1", fn,
                    o.bucket_layers);
    const stx::Transport &t = *dist->transport;
    const bool cpu_model = model->cfg.backend == STX_BACKEND_CPU;
    if (cpu_model != (t.device() == STX_DIST_CPU) ||
        (!cpu_model && model->cfg.device != t.device())) {
        char mdev[32], ddev[32];
        std::snprintf(mdev, sizeof mdev, cpu_model ? "cpu" : "cuda:%d", model->cfg.device);
        std::snprintf(ddev, sizeof ddev, t.device() == STX_DIST_CPU ? "cpu" : "cuda:%d",
                      t.device());
        return fail(STX_ERR_INVALID_ARGUMENT,
                    "%s: the model is on %s but the communicator on %s: they must be the same "
                    "device",
                    fn, mdev, ddev);
    }
    stx::DistGradOptions go;
    go.bf16 = o.grads == STX_DIST_GRADS_BF16;
    go.bucket_layers = o.bucket_layers;
    return stx::guarded(fn, [&] {
        std::unique_ptr<stx::GradSync> sync;
        stx_status s = dist->transport->make_grad_sync(model->cfg.precision, model->table.total, go,
                                                       dist->transport, &sync);
        if (s != STX_OK) return s;
        model->backend->set_grad_sync(nullptr);
        model->grad_sync = std::move(sync);
        model->dist = dist->transport;
        model->grad_sync_on = true;
        model->grads_reduced = model->grads_local = false;
        return STX_OK;
    });
}

STX_API stx_status stx_model_set_grad_sync(stx_model *model, int32_t on) {
    stx_status st = stx::check_model(model, "stx_model_set_grad_sync");
    if (st != STX_OK) return st;
    if (on != 0 && on != 1)
        return fail(STX_ERR_INVALID_ARGUMENT, "stx_model_set_grad_sync: on (%d) must be 0 or 1",
                    on);
    model->grad_sync_on = on == 1;
    return STX_OK;
}

STX_API stx_status stx_model_weights_checksum(const stx_model *model, uint64_t *checksum) {
    const char *fn = "stx_model_weights_checksum";
    stx_status st = stx::check_model(model, fn);
    if (st != STX_OK) return st;
    if (!checksum) return fail(STX_ERR_INVALID_ARGUMENT, "%s: checksum is NULL", fn);
    const bool f64 = model->cfg.precision == STX_PRECISION_FP64;
    return stx::guarded(fn, [&] {
        uint64_t h = 1469598103934665603ull; // FNV-1a 64
        std::vector<unsigned char> buf;
        for (size_t i = 0; i < model->table.tensors.size(); ++i) {
            const size_t n = static_cast<size_t>(model->table.tensors[i].numel);
            buf.resize(n * (f64 ? sizeof(double) : sizeof(float)));
            stx_status s =
                model->backend->tensor_read(stx::TensorKind::Param, static_cast<int32_t>(i),
                                            f64 ? STX_DTYPE_F64 : STX_DTYPE_F32, buf.data());
            if (s != STX_OK) return s;
            for (unsigned char c : buf) h = (h ^ c) * 1099511628211ull;
        }
        *checksum = h;
        return STX_OK;
    });
}

STX_API stx_status stx_dist_check_weights(stx_dist *dist, const stx_model *model,
                                          uint64_t *checksum, int32_t *all_equal) {
    const char *fn = "stx_dist_check_weights";
    stx_status st = stx::check_dist(dist, fn);
    if (st != STX_OK) return st;
    if (!all_equal) return fail(STX_ERR_INVALID_ARGUMENT, "%s: all_equal is NULL", fn);
    uint64_t h = 0;
    if ((st = stx_model_weights_checksum(model, &h)) != STX_OK) return stx::fail_context(st, fn);
    // Equal everywhere iff the minimum and maximum of each 32-bit half agree (exact in doubles).
    double v[4] = {static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu), 0, 0};
    v[2] = v[0];
    v[3] = v[1];
    double lo[2] = {v[0], v[1]}, hi[2] = {v[2], v[3]};
    if ((st = stx_dist_allreduce(dist, lo, 2, STX_REDUCE_MIN)) != STX_OK) return st;
    if ((st = stx_dist_allreduce(dist, hi, 2, STX_REDUCE_MAX)) != STX_OK) return st;
    if (checksum) *checksum = h;
    *all_equal = lo[0] == hi[0] && lo[1] == hi[1] ? 1 : 0;
    return STX_OK;
}

} // extern "C"
