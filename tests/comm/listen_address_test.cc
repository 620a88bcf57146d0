// Listen-address resolution: IP literals, interface names and subnets against a hand-written
// interface list, and against this host's loopback.
#include "comm/listen_address.h"

#include <netinet/in.h>

#include <gtest/gtest.h>

namespace flotilla {
namespace {

const std::vector<InterfaceAddress> kHost = {
    {"lo", "127.0.0.1", AF_INET},
    {"eth0", "fe80::1c2:3ff:fe04:506", AF_INET6},
    {"eth0", "10.1.7.20", AF_INET},
    {"ib0", "192.168.50.3", AF_INET},
    {"v6only", "2001:db8:0:12::7", AF_INET6},
};

TEST(ListenAddress, LiteralsAreKept) {
  EXPECT_EQ(*ResolveListenAddress("127.0.0.1", kHost), "127.0.0.1");
  EXPECT_EQ(*ResolveListenAddress("0.0.0.0", kHost), "0.0.0.0");
  EXPECT_EQ(*ResolveListenAddress("::1", kHost), "::1");
  // A literal is not checked against the interfaces: binding reports that.
  EXPECT_EQ(*ResolveListenAddress("203.0.113.9", kHost), "203.0.113.9");
}

TEST(ListenAddress, InterfaceNamePrefersIpv4) {
  EXPECT_EQ(*ResolveListenAddress("eth0", kHost), "10.1.7.20");
  EXPECT_EQ(*ResolveListenAddress("v6only", kHost), "2001:db8:0:12::7");
  auto missing = ResolveListenAddress("eth9", kHost);
  ASSERT_TRUE(absl::IsNotFound(missing.status()));
  EXPECT_NE(missing.status().message().find("'eth9'"), std::string::npos);
  EXPECT_NE(missing.status().message().find("ib0 192.168.50.3"), std::string::npos);
}

TEST(ListenAddress, SubnetPicksTheAddressInside) {
  EXPECT_EQ(*ResolveListenAddress("10.0.0.0/8", kHost), "10.1.7.20");
  EXPECT_EQ(*ResolveListenAddress("10.1.7.0/24", kHost), "10.1.7.20");
  EXPECT_EQ(*ResolveListenAddress("10.1.7.20/32", kHost), "10.1.7.20");
  EXPECT_EQ(*ResolveListenAddress("192.168.48.0/22", kHost), "192.168.50.3");  // 48..51
  EXPECT_EQ(*ResolveListenAddress("0.0.0.0/0", kHost), "127.0.0.1");
  EXPECT_EQ(*ResolveListenAddress("2001:db8::/32", kHost), "2001:db8:0:12::7");
  EXPECT_TRUE(absl::IsNotFound(ResolveListenAddress("192.168.52.0/22", kHost).status()));
  EXPECT_TRUE(absl::IsNotFound(ResolveListenAddress("10.1.7.21/32", kHost).status()));
}

TEST(ListenAddress, MalformedSubnetsAreRefused) {
  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/", "10.0.0/8", "zz/8",
                          "::/129", "10.0.0.0/8x"}) {
    auto r = ResolveListenAddress(bad, kHost);
    EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << bad << ": " << r.status();
  }
  EXPECT_TRUE(absl::IsInvalidArgument(ResolveListenAddress("", kHost).status()));
}

TEST(ListenAddress, ThisHostHasLoopback) {
  auto interfaces = LocalInterfaceAddresses();
  ASSERT_TRUE(interfaces.ok()) << interfaces.status();
  EXPECT_EQ(*ResolveListenAddress("127.0.0.0/8"), "127.0.0.1");
  EXPECT_EQ(*ResolveListenAddress("lo"), "127.0.0.1");
}

}  // namespace
}  // namespace flotilla
