#!/usr/bin/perl
# Verifies the DKIM signature of each message file with Perl's Mail::DKIM (an implementation
# independent of dkimpy and of sluice's), answering every SELECTOR._domainkey.* key query with
# one TXT record. Prints per file: `FILE none`, or `FILE d=DOMAIN pass|fail|invalid (DETAIL)`.
#
# Usage: dkim_verify.pl SELECTOR TXT-FILE FILE...
use strict;
use warnings;
use Mail::DKIM::Verifier;
use FindBin;
use lib $FindBin::Bin;
use TxtRecord;

my ($selector, $txt_file, @files) = @ARGV;
open(my $t, '<', $txt_file) or die "$txt_file: $!";
my $txt = do { local $/; <$t> };
$txt =~ s/\s+$//;
{
    no warnings 'redefine';
    *Mail::DKIM::DNS::query = sub {
        my ($domain, $type) = @_;
        return () unless $type eq 'TXT' && $domain =~ /^\Q$selector\E\._domainkey\./i;
        return (TxtRecord::rr($domain, $txt));
    };
}
for my $file (@files) {
    open(my $fh, '<:raw', $file) or die "$file: $!";
    my $dkim = Mail::DKIM::Verifier->new();
    while (<$fh>) { $dkim->PRINT($_) }
    $dkim->CLOSE;
    my ($sig) = $dkim->signatures;
    if (!$sig) { print "$file none\n"; next }
    my $detail = $sig->result_detail // '';
    printf "%s d=%s %s (%s)\n", $file, $sig->domain, $sig->result, $detail;
}
