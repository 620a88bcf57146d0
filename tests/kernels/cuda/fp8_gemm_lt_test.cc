// The cuBLASLt descriptors of the FP8 GEMM (kernels/cuda/fp8_gemm_lt.h), created on the CPU (no
// device or handle is needed for them) and read back attribute by attribute.
#include "kernels/cuda/fp8_gemm_lt.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace flotilla::kernels::cuda {
namespace {

template <typename T>
T DescAttr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr) {
  T v{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatmulDescGetAttribute(desc, attr, &v, sizeof(v), &written),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(written, sizeof(v));
  return v;
}

template <typename T>
T LayoutAttr(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr) {
  T v{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatrixLayoutGetAttribute(layout, attr, &v, sizeof(v), &written),
            CUBLAS_STATUS_SUCCESS);
  return v;
}

TEST(Fp8GemmLtDescriptors, OperationIsTnBlockScaledWithoutFastAccumulation) {
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(MakeFp8GemmDesc(&desc), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_COMPUTE_TYPE), CUBLAS_COMPUTE_32F);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_SCALE_TYPE), CUDA_R_32F);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_TRANSA), CUBLAS_OP_T);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_TRANSB), CUBLAS_OP_N);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE),
            CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F);
  EXPECT_EQ(DescAttr<int32_t>(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE),
            CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F);
  EXPECT_EQ(DescAttr<int8_t>(desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM), 0);
  cublasLtMatmulDescDestroy(desc);
}

TEST(Fp8GemmLtDescriptors, LayoutsOfAV4FlashCall) {
  // wo_b: 3 rows of 8192 -> 4096, output rows 4104 apart.
  Fp8GemmLtLayouts layouts;
  ASSERT_EQ(layouts.Make(MakeFp8GemmLayout(3, 4096, 8192, 4104)), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(LayoutAttr<uint32_t>(layouts.a, CUBLASLT_MATRIX_LAYOUT_TYPE), CUDA_R_8F_E4M3);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.a, CUBLASLT_MATRIX_LAYOUT_ROWS), 8192u);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.a, CUBLASLT_MATRIX_LAYOUT_COLS), 4096u);
  EXPECT_EQ(LayoutAttr<int64_t>(layouts.a, CUBLASLT_MATRIX_LAYOUT_LD), 8192);
  EXPECT_EQ(LayoutAttr<uint32_t>(layouts.b, CUBLASLT_MATRIX_LAYOUT_TYPE), CUDA_R_8F_E4M3);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.b, CUBLASLT_MATRIX_LAYOUT_ROWS), 8192u);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.b, CUBLASLT_MATRIX_LAYOUT_COLS), 3u);
  EXPECT_EQ(LayoutAttr<int64_t>(layouts.b, CUBLASLT_MATRIX_LAYOUT_LD), 8192);
  EXPECT_EQ(LayoutAttr<uint32_t>(layouts.d, CUBLASLT_MATRIX_LAYOUT_TYPE), CUDA_R_16BF);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.d, CUBLASLT_MATRIX_LAYOUT_ROWS), 4096u);
  EXPECT_EQ(LayoutAttr<uint64_t>(layouts.d, CUBLASLT_MATRIX_LAYOUT_COLS), 3u);
  EXPECT_EQ(LayoutAttr<int64_t>(layouts.d, CUBLASLT_MATRIX_LAYOUT_LD), 4104);
  EXPECT_EQ(LayoutAttr<int32_t>(layouts.d, CUBLASLT_MATRIX_LAYOUT_ORDER), CUBLASLT_ORDER_COL);
}

}  // namespace
}  // namespace flotilla::kernels::cuda
